// A Pyroscope push receiver for kubeprof's real-node test: it speaks what Grafana Pyroscope's
// distributor accepts from Alloy's pyroscope.write, and what kubeprof's Pyroscope sink sends:
//
//	POST /push.v1.PusherService/Push   a Connect unary call (Connect-Protocol-Version: 1),
//	                                    Content-Type application/proto, body a PushRequest
//	                                    (grafana/pyroscope api/push/v1/push.proto); tenant in
//	                                    X-Scope-OrgID
//
// Every raw profile is decoded as pprof (gzip-compressed or not), written independently of
// kubeprof's own code so that the test checks the wire format, not our reading of it. What
// arrived is served as JSON:
//
//	GET /received   {"accepted": [...], "rejected": N, "lastError": "..."}: per profile its
//	                labels, tenant, Authorization header, sample types, sample count,
//	                function names and the sample's ID
//	GET /healthz    ok
//
// Memory is bounded: the last 1000 profiles are kept. Build: go build -o pushreceiver
// pushreceiver.go (standard library only).
package main

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"sort"
	"sync"
	"time"
)

const (
	maxBody     = 64 << 20
	keepLatest  = 1000
	maxFuncsOut = 4000
)

// Received is one profile as it arrived.
type Received struct {
	Labels map[string]string `json:"labels"`
	Tenant string            `json:"tenant"`
	// The Authorization header (test credentials only).
	Authorization string   `json:"authorization"`
	ID            string   `json:"id"`
	SampleTypes   []string `json:"sampleTypes"`
	Samples       int      `json:"samples"`
	Functions     []string `json:"functions"`
	Bytes         int      `json:"bytes"`
	// When it arrived, in milliseconds since the Unix epoch.
	AtUnixMs int64 `json:"atUnixMs"`
}

type store struct {
	mu        sync.Mutex
	accepted  []Received
	rejected  int
	lastError string
}

func (s *store) add(r []Received) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.accepted = append(s.accepted, r...)
	if n := len(s.accepted); n > keepLatest {
		s.accepted = append([]Received(nil), s.accepted[n-keepLatest:]...)
	}
}

func (s *store) reject(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rejected++
	s.lastError = err.Error()
}

// --- protobuf wire format --------------------------------------------------------------------

type field struct {
	num   int
	wire  int
	value uint64 // varint
	bytes []byte // length-delimited
}

// fields splits a message into its fields; fixed32/64 are skipped.
func fields(b []byte) ([]field, error) {
	var out []field
	for len(b) > 0 {
		key, n := binary.Uvarint(b)
		if n <= 0 {
			return nil, errors.New("bad field key")
		}
		b = b[n:]
		f := field{num: int(key >> 3), wire: int(key & 7)}
		switch f.wire {
		case 0:
			v, n := binary.Uvarint(b)
			if n <= 0 {
				return nil, errors.New("bad varint")
			}
			f.value, b = v, b[n:]
		case 1:
			if len(b) < 8 {
				return nil, errors.New("short fixed64")
			}
			b = b[8:]
		case 2:
			l, n := binary.Uvarint(b)
			if n <= 0 || uint64(len(b)-n) < l {
				return nil, errors.New("bad length")
			}
			f.bytes, b = b[n:n+int(l)], b[n+int(l):]
		case 5:
			if len(b) < 4 {
				return nil, errors.New("short fixed32")
			}
			b = b[4:]
		default:
			return nil, fmt.Errorf("unsupported wire type %d", f.wire)
		}
		out = append(out, f)
	}
	return out, nil
}

// --- pprof (github.com/google/pprof proto/profile.proto) -----------------------------------

type profile struct {
	sampleTypes []string
	samples     int
	functions   []string
}

func decodeProfile(raw []byte) (profile, error) {
	var p profile
	if len(raw) >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
		zr, err := gzip.NewReader(bytes.NewReader(raw))
		if err != nil {
			return p, fmt.Errorf("gzip: %w", err)
		}
		raw, err = io.ReadAll(io.LimitReader(zr, maxBody))
		if err != nil {
			return p, fmt.Errorf("gzip: %w", err)
		}
	}
	fs, err := fields(raw)
	if err != nil {
		return p, fmt.Errorf("pprof: %w", err)
	}
	var strs []string
	var types [][2]uint64
	var funcNames []uint64
	for _, f := range fs {
		switch {
		case f.num == 1 && f.wire == 2: // sample_type: ValueType{type=1, unit=2}
			vt, err := fields(f.bytes)
			if err != nil {
				return p, fmt.Errorf("pprof sample_type: %w", err)
			}
			var t [2]uint64
			for _, v := range vt {
				if v.wire == 0 && (v.num == 1 || v.num == 2) {
					t[v.num-1] = v.value
				}
			}
			types = append(types, t)
		case f.num == 2 && f.wire == 2: // sample
			if _, err := fields(f.bytes); err != nil {
				return p, fmt.Errorf("pprof sample: %w", err)
			}
			p.samples++
		case f.num == 5 && f.wire == 2: // function: Function{id=1, name=2, ...}
			fn, err := fields(f.bytes)
			if err != nil {
				return p, fmt.Errorf("pprof function: %w", err)
			}
			for _, v := range fn {
				if v.num == 2 && v.wire == 0 {
					funcNames = append(funcNames, v.value)
				}
			}
		case f.num == 6 && f.wire == 2: // string_table
			strs = append(strs, string(f.bytes))
		}
	}
	if len(strs) == 0 || strs[0] != "" {
		return p, errors.New("pprof: string_table must start with \"\"")
	}
	str := func(i uint64) (string, error) {
		if i >= uint64(len(strs)) {
			return "", fmt.Errorf("pprof: string index %d out of %d", i, len(strs))
		}
		return strs[i], nil
	}
	if len(types) == 0 {
		return p, errors.New("pprof: no sample_type")
	}
	for _, t := range types {
		name, err := str(t[0])
		if err != nil {
			return p, err
		}
		unit, err := str(t[1])
		if err != nil {
			return p, err
		}
		p.sampleTypes = append(p.sampleTypes, name+":"+unit)
	}
	seen := map[string]bool{}
	for _, i := range funcNames {
		name, err := str(i)
		if err != nil {
			return p, err
		}
		if !seen[name] && len(seen) < maxFuncsOut {
			seen[name] = true
			p.functions = append(p.functions, name)
		}
	}
	sort.Strings(p.functions)
	return p, nil
}

// --- push.v1.PushRequest ---------------------------------------------------------------------

func decodePush(body []byte, tenant, authorization string) ([]Received, error) {
	top, err := fields(body)
	if err != nil {
		return nil, fmt.Errorf("PushRequest: %w", err)
	}
	var out []Received
	for _, s := range top {
		if s.num != 1 || s.wire != 2 { // series
			continue
		}
		series, err := fields(s.bytes)
		if err != nil {
			return nil, fmt.Errorf("RawProfileSeries: %w", err)
		}
		labels := map[string]string{}
		var samples [][]byte
		for _, f := range series {
			switch {
			case f.num == 1 && f.wire == 2: // LabelPair{name=1, value=2}
				lp, err := fields(f.bytes)
				if err != nil {
					return nil, fmt.Errorf("LabelPair: %w", err)
				}
				var kv [2]string
				for _, v := range lp {
					if v.wire == 2 && (v.num == 1 || v.num == 2) {
						kv[v.num-1] = string(v.bytes)
					}
				}
				if kv[0] == "" {
					return nil, errors.New("LabelPair with an empty name")
				}
				labels[kv[0]] = kv[1]
			case f.num == 2 && f.wire == 2:
				samples = append(samples, f.bytes)
			}
		}
		if labels["__name__"] == "" {
			return nil, errors.New("series without __name__")
		}
		if len(samples) == 0 {
			return nil, errors.New("series without samples")
		}
		for _, raw := range samples {
			sf, err := fields(raw) // RawSample{raw_profile=1, ID=2}
			if err != nil {
				return nil, fmt.Errorf("RawSample: %w", err)
			}
			r := Received{Labels: labels, Tenant: tenant, Authorization: authorization, AtUnixMs: time.Now().UnixMilli()}
			var prof []byte
			for _, v := range sf {
				switch {
				case v.num == 1 && v.wire == 2:
					prof = v.bytes
				case v.num == 2 && v.wire == 2:
					r.ID = string(v.bytes)
				}
			}
			p, err := decodeProfile(prof)
			if err != nil {
				return nil, fmt.Errorf("series %v: %w", labels, err)
			}
			r.SampleTypes, r.Samples, r.Functions, r.Bytes = p.sampleTypes, p.samples, p.functions, len(prof)
			out = append(out, r)
		}
	}
	return out, nil
}

// connectError answers as a Connect unary error (JSON body, HTTP status from the code).
func connectError(w http.ResponseWriter, status int, code string, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"code": code, "message": err.Error()})
}

func main() {
	addr := flag.String("listen", ":4040", "address of the push API and /received")
	flag.Parse()
	s := &store{}
	http.HandleFunc("/push.v1.PusherService/Push", func(w http.ResponseWriter, r *http.Request) {
		fail := func(status int, code string, err error) {
			s.reject(err)
			log.Printf("rejected: %v", err)
			connectError(w, status, code, err)
		}
		if r.Method != http.MethodPost {
			fail(http.StatusMethodNotAllowed, "unimplemented", fmt.Errorf("method %s", r.Method))
			return
		}
		if ct := r.Header.Get("Content-Type"); ct != "application/proto" {
			fail(http.StatusUnsupportedMediaType, "invalid_argument", fmt.Errorf("Content-Type %q, want application/proto", ct))
			return
		}
		if v := r.Header.Get("Connect-Protocol-Version"); v != "1" {
			fail(http.StatusBadRequest, "invalid_argument", fmt.Errorf("Connect-Protocol-Version %q, want 1", v))
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
		if err != nil || len(body) > maxBody {
			fail(http.StatusBadRequest, "invalid_argument", fmt.Errorf("body: %v (%d bytes)", err, len(body)))
			return
		}
		got, err := decodePush(body, r.Header.Get("X-Scope-OrgID"), r.Header.Get("Authorization"))
		if err != nil {
			fail(http.StatusBadRequest, "invalid_argument", err)
			return
		}
		s.add(got)
		// An empty PushResponse.
		w.Header().Set("Content-Type", "application/proto")
		w.WriteHeader(http.StatusOK)
	})
	http.HandleFunc("/received", func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"accepted":  s.accepted,
			"rejected":  s.rejected,
			"lastError": s.lastError,
		})
	})
	http.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	log.Printf("pushreceiver listening on %s", *addr)
	log.Fatal(http.ListenAndServe(*addr, nil))
}
