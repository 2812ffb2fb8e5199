// A small Go service for kubeprof's tests: net/http/pprof plus a CPU-hot function, a growing
// allocator, mutex contention and goroutines blocked on a channel, so every profile type has
// something to show. Build: go build -o pprofdemo pprofdemo.go (standard library only).
package main

import (
	"flag"
	"log"
	"net/http"
	_ "net/http/pprof"
	"runtime"
	"sync"
	"time"
)

var sink [][]byte

//go:noinline
func hotCPULeaf(n int) int {
	x := 0
	for i := 0; i < n; i++ {
		x += i * i % 7
	}
	return x
}

func leakyAllocator() {
	for {
		sink = append(sink, make([]byte, 16<<10))
		if len(sink) > 2000 {
			sink = sink[1000:]
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func contendedMutex(mu *sync.Mutex) {
	for {
		mu.Lock()
		hotCPULeaf(20000)
		mu.Unlock()
		// Contended, but not a busy loop: tests run several of these on two cores.
		time.Sleep(time.Millisecond)
	}
}

func blockedOnChannel(ch chan struct{}) { <-ch }

func main() {
	addr := flag.String("listen", "127.0.0.1:6060", "address of /debug/pprof")
	flag.Parse()
	runtime.SetMutexProfileFraction(5)
	runtime.SetBlockProfileRate(1000)
	go leakyAllocator()
	var mu sync.Mutex
	for i := 0; i < 4; i++ {
		go contendedMutex(&mu)
	}
	ch := make(chan struct{})
	for i := 0; i < 50; i++ {
		go blockedOnChannel(ch)
	}
	go func() {
		for {
			hotCPULeaf(500_000)
			time.Sleep(10 * time.Millisecond)
		}
	}()
	log.Printf("pprofdemo listening on %s", *addr)
	log.Fatal(http.ListenAndServe(*addr, nil))
}
