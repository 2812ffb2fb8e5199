// kubeprof's CPU sampler. Runs on a software CPU-clock perf event on every online CPU; for a
// sampled task of the selected set it counts (tgid, pid, comm, cgroup, user stack, kernel stack)
// in one of two buffers, which user space drains in turn (see `sampler.rs` for the protocol).
//
// Only UAPI headers: the program reads no kernel structure, so it needs neither vmlinux.h nor
// BTF, and builds the same on every machine.
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/bpf_perf_event.h>
#include <bpf/bpf_helpers.h>

#define TASK_COMM_LEN 16
#define MAX_STACK_DEPTH 127

// Must match `SampleKey` in sampler.rs byte for byte.
struct sample_key {
	__u32 tgid;
	__u32 pid;
	__s32 user_stack_id;
	__s32 kernel_stack_id;
	__u64 cgroup_id;
	char comm[TASK_COMM_LEN];
};

// Capacities are placeholders: user space sets them before loading.
#define COUNTS_MAP(name)                                                                           \
	struct {                                                                                   \
		__uint(type, BPF_MAP_TYPE_HASH);                                                   \
		__uint(max_entries, 1);                                                            \
		__type(key, struct sample_key);                                                    \
		__type(value, __u64);                                                              \
	} name SEC(".maps")

#define STACKS_MAP(name)                                                                           \
	struct {                                                                                   \
		__uint(type, BPF_MAP_TYPE_STACK_TRACE);                                            \
		__uint(max_entries, 1);                                                            \
		__uint(key_size, sizeof(__u32));                                                   \
		__uint(value_size, MAX_STACK_DEPTH * sizeof(__u64));                               \
	} name SEC(".maps")

COUNTS_MAP(counts_0);
COUNTS_MAP(counts_1);
STACKS_MAP(stacks_0);
STACKS_MAP(stacks_1);

// The selected set: a task is sampled when `sample_all` is set, or its tgid is in
// `allowed_tgids`, or its (cgroup v2) cgroup id is in `allowed_cgroups`.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u8);
} allowed_tgids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, __u8);
} allowed_cgroups SEC(".maps");

// tgids already announced to user space (through `new_processes`), so it reads a process's
// mappings while the process still lives. Forgotten on exec, when the mappings change.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u8);
} known_tgids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} new_processes SEC(".maps");

// Per-CPU counters of what could not be recorded; indices match `LossCounter` in sampler.rs.
#define LOST_COUNTS_FULL 0
#define LOST_ANNOUNCE 1
#define STACK_ERRORS 2
#define N_LOSS 3
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, N_LOSS);
	__type(key, __u32);
	__type(value, __u64);
} losses SEC(".maps");

// Written by user space; must match `Control` in sampler.rs.
struct control {
	__u32 active_buffer;
	__u32 sample_all;
};
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct control);
} control SEC(".maps");

static __always_inline void count_loss(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&losses, &which);
	if (v)
		*v += 1;
}

static __always_inline void announce(__u32 tgid)
{
	__u8 one = 1;
	if (bpf_map_lookup_elem(&known_tgids, &tgid))
		return;
	if (bpf_map_update_elem(&known_tgids, &tgid, &one, BPF_NOEXIST))
		return; // another CPU announced it first
	__u32 *e = bpf_ringbuf_reserve(&new_processes, sizeof(__u32), 0);
	if (!e) {
		// User space will learn of it at the drain, later; forget it so the next sample
		// tries again.
		bpf_map_delete_elem(&known_tgids, &tgid);
		count_loss(LOST_ANNOUNCE);
		return;
	}
	*e = tgid;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline void add(void *counts, struct sample_key *key)
{
	__u64 one = 1;
	__u64 *v = bpf_map_lookup_elem(counts, key);
	if (v) {
		__sync_fetch_and_add(v, 1);
		return;
	}
	if (!bpf_map_update_elem(counts, key, &one, BPF_NOEXIST))
		return;
	// Inserted by another CPU meanwhile, or the map is full.
	v = bpf_map_lookup_elem(counts, key);
	if (v)
		__sync_fetch_and_add(v, 1);
	else
		count_loss(LOST_COUNTS_FULL);
}

SEC("perf_event")
int on_cpu_clock(struct bpf_perf_event_data *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	__u32 pid = (__u32)id;
	if (tgid == 0)
		return 0; // the idle task
	__u32 zero = 0;
	struct control *ctl = bpf_map_lookup_elem(&control, &zero);
	if (!ctl)
		return 0;
	__u64 cgroup_id = bpf_get_current_cgroup_id();
	if (!*(volatile __u32 *)&ctl->sample_all && !bpf_map_lookup_elem(&allowed_tgids, &tgid) &&
	    !bpf_map_lookup_elem(&allowed_cgroups, &cgroup_id))
		return 0;

	announce(tgid);

	struct sample_key key = {};
	key.tgid = tgid;
	key.pid = pid;
	key.cgroup_id = cgroup_id;
	bpf_get_current_comm(&key.comm, sizeof(key.comm));
	// Read once: the stacks and the count must land in the same buffer.
	__u32 buffer = *(volatile __u32 *)&ctl->active_buffer;
	if (buffer == 0) {
		key.user_stack_id = bpf_get_stackid(ctx, &stacks_0, BPF_F_USER_STACK);
		key.kernel_stack_id = bpf_get_stackid(ctx, &stacks_0, 0);
	} else {
		key.user_stack_id = bpf_get_stackid(ctx, &stacks_1, BPF_F_USER_STACK);
		key.kernel_stack_id = bpf_get_stackid(ctx, &stacks_1, 0);
	}
	// -EFAULT (-14) is an empty stack: no user stack in a kernel thread, no kernel stack for a
	// sample in user mode. Anything else is a stack lost (-EEXIST: the stack map's bucket holds
	// another stack; -ENOMEM: the map is full); the sample still counts, without it.
	if ((key.user_stack_id < 0 && key.user_stack_id != -14) ||
	    (key.kernel_stack_id < 0 && key.kernel_stack_id != -14))
		count_loss(STACK_ERRORS);
	if (buffer == 0)
		add(&counts_0, &key);
	else
		add(&counts_1, &key);
	return 0;
}

// The exec of a known process changes its mappings: forget it, so its next sample announces it
// again.
// A raw tracepoint: attached by name, with no tracefs mounted.
SEC("raw_tracepoint/sched_process_exec")
int on_exec(void *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	bpf_map_delete_elem(&known_tgids, &tgid);
	return 0;
}

// GPL-compatible, as bpf_get_stackid requires; the rest of kubeprof is Apache-2.0.
char LICENSE[] SEC("license") = "Dual BSD/GPL";
