// microbatch.reduce, common part: one micro-batch (or one binding-sized piece of it) → one Partial
// per workgroup. The host appends one of two entry points: reduce_tree.wgsl (workgroup memory
// tree, any adapter) or reduce_subgroup.wgsl (subgroup operations, adapters with SUBGROUP).
//
// Kept in sync with src/backend/gpu/mod.rs (GpuParams, GpuPartial) and src/backend/cpu.rs, which
// runs the same lane logic on the CPU so the two backends can be compared value for value.
//
// Numerics (DESIGN.md):
// - WGSL lets an implementation assume floats are finite, so NaN and ±inf are classified from the
//   bits with integer operations, counted, and kept out of the float arithmetic that counts.
// - min/max use an order-preserving u32 key of the bits: exact, and immune to subnormal flushing.
// - Moments are shifted, scaled sums Σd, Σd² with d = (x−K)·S, computed as fma(x, S, −K·S): K is
//   chosen by the host near the batch's median, so Σd² never cancels catastrophically, and S is a
//   power of two bringing the bulk of the data near 1, so that Σd² neither overflows for large
//   magnitudes nor underflows for tiny ones (exact: x·S and K·S need no rounding). Each vec4 lane accumulates
//   sequentially, then the workgroup combines its threads (tree or subgroups).
//
// Speed (BENCHMARKS.md, issue 4): each thread issues VEC_PER_THREAD independent vec4 loads per
// iteration, and the per-element work is only s1, s2 and the key range. A NaN or an infinity
// shows in a thread's key range (its key lies outside the finite keys); only such a thread
// re-reads its elements with full classification and throws its fast sums away.

// Invocations per workgroup (a power of two; checked on the host).
override WG_SIZE: u32 = 256u;
// vec4 loads each thread has in flight per loop iteration.
override VEC_PER_THREAD: u32 = 4u;

struct Params {
    len: u32,        // valid f32 elements in `input`
    k_scaled: f32,   // K·S
    out_base: u32,   // index of this dispatch's first partial in `partials`
    scale: f32,      // S, a power of two
}

struct Partial {
    count: u32,      // finite values
    nan_count: u32,
    pos_inf: u32,
    neg_inf: u32,
    min_key: u32,    // order-preserving key of the smallest finite value (0xffffffff: none)
    max_key: u32,    // order-preserving key of the largest finite value (0: none)
    s1: f32,         // Σd over finite values, d = (x−K)·S
    s2: f32,         // Σd² over finite values
}

@group(0) @binding(0) var<storage, read> input: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> partials: array<Partial>;
@group(0) @binding(2) var<uniform> params: Params;

const ABS_MASK: u32 = 0x7fffffffu;
const INF_BITS: u32 = 0x7f800000u;
const NEG_INF_BITS: u32 = 0xff800000u;
// Keys of f32::MAX and -f32::MAX: a finite value's key lies between them.
const MAX_FINITE_KEY: u32 = 0xff7fffffu;
const MIN_FINITE_KEY: u32 = 0x00800000u;

// Order-preserving map from f32 bits to u32: negative values flip all bits, positive values set
// the sign bit. Same function as `order_key` in src/backend/cpu.rs.
fn order_key(b: vec4<u32>) -> vec4<u32> {
    let neg = bitcast<vec4<u32>>(bitcast<vec4<i32>>(b) >> vec4<u32>(31u));
    return b ^ (neg | vec4<u32>(0x80000000u));
}

// One thread's share, folded to scalars.
struct Thread {
    count: u32,
    nan: u32,
    pos_inf: u32,
    neg_inf: u32,
    kmin: u32,
    kmax: u32,
    s1: f32,
    s2: f32,
}

// The slow path keeps a `Thread` as its running state, folded across each vec4 as it arrives
// like the fast path's, so that this rarely taken code does not raise the kernel's register count.
fn slow_new() -> Thread {
    return Thread(0u, 0u, 0u, 0u, 0xffffffffu, 0u, 0.0, 0.0);
}

fn count4(b: vec4<bool>) -> u32 {
    let v = select(vec4<u32>(0u), vec4<u32>(1u), b);
    return (v.x + v.y) + (v.z + v.w);
}

// Adds one vec4 to `s` with full classification; lanes where `valid` is false count as nothing.
fn slow_add(s: ptr<function, Thread>, x: vec4<f32>, valid: vec4<bool>, scale: vec4<f32>, ks: vec4<f32>) {
    let bits = bitcast<vec4<u32>>(x);
    let abs_bits = bits & vec4<u32>(ABS_MASK);
    let finite = valid & (abs_bits < vec4<u32>(INF_BITS));
    let d = select(vec4<f32>(0.0), fma(x, scale, -ks), finite);
    let d2 = d * d;
    (*s).s1 += (d.x + d.y) + (d.z + d.w);
    (*s).s2 += (d2.x + d2.y) + (d2.z + d2.w);
    (*s).count += count4(finite);
    (*s).nan += count4(valid & (abs_bits > vec4<u32>(INF_BITS)));
    (*s).pos_inf += count4(valid & (bits == vec4<u32>(INF_BITS)));
    (*s).neg_inf += count4(valid & (bits == vec4<u32>(NEG_INF_BITS)));
    let key = order_key(bits);
    let lo = select(vec4<u32>(0xffffffffu), key, finite);
    let hi = select(vec4<u32>(0u), key, finite);
    (*s).kmin = min((*s).kmin, min(min(lo.x, lo.y), min(lo.z, lo.w)));
    (*s).kmax = max((*s).kmax, max(max(hi.x, hi.y), max(hi.z, hi.w)));
}

// Running state of the fast path: shifted sums and key range, no classification. s1 and the key
// range are folded across each vec4 as it arrives (the same instruction count as vec4
// accumulators, a quarter of the registers: registers are what limits how many threads, and so
// how many loads, an SM keeps in flight). s2 keeps four lanes so its products need no extra adds.
struct Fast {
    s1: f32,
    s2: vec4<f32>,
    kmin: u32,
    kmax: u32,
}

fn fast_add(f: ptr<function, Fast>, x: vec4<f32>, scale: vec4<f32>, ks: vec4<f32>) {
    let d = fma(x, scale, -ks);
    (*f).s1 += (d.x + d.y) + (d.z + d.w);
    (*f).s2 += d * d;
    let key = order_key(bitcast<vec4<u32>>(x));
    (*f).kmin = min((*f).kmin, min(min(key.x, key.y), min(key.z, key.w)));
    (*f).kmax = max((*f).kmax, max(max(key.x, key.y), max(key.z, key.w)));
}

// Reduces this thread's share of the batch: vec4s first + k·WG_SIZE (k < VEC_PER_THREAD) for
// first = (wid·VEC_PER_THREAD)·WG_SIZE + lid, stepping by the whole grid; then, in global thread
// 0, the last partial vec4.
fn reduce_thread(lid: u32, wid: u32, nwg: u32) -> Thread {
    let len = params.len;
    let scale = vec4<f32>(params.scale);
    let ks = vec4<f32>(params.k_scaled);
    let n_full = len / 4u;
    let tile = WG_SIZE * VEC_PER_THREAD;
    let first = wid * tile + lid;
    let stride = nwg * tile;
    let last_k = (VEC_PER_THREAD - 1u) * WG_SIZE;

    var f = Fast(0.0, vec4<f32>(0.0), 0xffffffffu, 0u);
    var visited = 0u;
    var i = first;
    // Whole tiles: VEC_PER_THREAD loads with no bounds checks, all in flight at once.
    for (; i + last_k < n_full; i += stride) {
        for (var k = 0u; k < VEC_PER_THREAD; k++) {
            fast_add(&f, input[i + k * WG_SIZE], scale, ks);
        }
        visited += 4u * VEC_PER_THREAD;
    }
    // At most one partial tile per thread at the end of the batch.
    if (i < n_full) {
        for (var k = 0u; k < VEC_PER_THREAD; k++) {
            let j = i + k * WG_SIZE;
            if (j < n_full) {
                fast_add(&f, input[j], scale, ks);
                visited += 4u;
            }
        }
    }

    let lo = f.kmin;
    let hi = f.kmax;
    let tail = len % 4u != 0u && lid == 0u && wid == 0u;
    if (lo >= MIN_FINITE_KEY && hi <= MAX_FINITE_KEY && !tail) {
        // All finite (or nothing visited: lo = 0xffffffff, hi = 0, both in range).
        return Thread(visited, 0u, 0u, 0u, lo, hi, f.s1, (f.s2.x + f.s2.y) + (f.s2.z + f.s2.w));
    }

    // Rare: a NaN or an infinity among this thread's values, or the thread owning the tail.
    var s = slow_new();
    for (var i = first; i < n_full; i += stride) {
        for (var k = 0u; k < VEC_PER_THREAD; k++) {
            let j = i + k * WG_SIZE;
            if (j < n_full) {
                slow_add(&s, input[j], vec4<bool>(true), scale, ks);
            }
        }
    }
    if (tail) {
        // The last vec4 holds len % 4 valid lanes; the rest may be stale data from an earlier batch.
        let valid = vec4<u32>(n_full * 4u) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(len);
        slow_add(&s, input[n_full], valid, scale, ks);
    }
    return s;
}

// Workgroup memory for combining the threads' (or subgroups') results; WG_SIZE entries cover
// either entry point.
var<workgroup> wg_s1: array<f32, WG_SIZE>;
var<workgroup> wg_s2: array<f32, WG_SIZE>;
var<workgroup> wg_count: array<u32, WG_SIZE>;
var<workgroup> wg_nan: array<u32, WG_SIZE>;
var<workgroup> wg_pos_inf: array<u32, WG_SIZE>;
var<workgroup> wg_neg_inf: array<u32, WG_SIZE>;
var<workgroup> wg_min: array<u32, WG_SIZE>;
var<workgroup> wg_max: array<u32, WG_SIZE>;

// Stores `t` in slot `i` of the workgroup arrays.
fn wg_store(i: u32, t: Thread) {
    wg_s1[i] = t.s1;
    wg_s2[i] = t.s2;
    wg_count[i] = t.count;
    wg_nan[i] = t.nan;
    wg_pos_inf[i] = t.pos_inf;
    wg_neg_inf[i] = t.neg_inf;
    wg_min[i] = t.kmin;
    wg_max[i] = t.kmax;
}

// Slot `i` of the workgroup arrays.
fn wg_load(i: u32) -> Thread {
    return Thread(wg_count[i], wg_nan[i], wg_pos_inf[i], wg_neg_inf[i], wg_min[i], wg_max[i],
                  wg_s1[i], wg_s2[i]);
}

// Combines two threads' results.
fn combine(a: Thread, b: Thread) -> Thread {
    return Thread(a.count + b.count, a.nan + b.nan, a.pos_inf + b.pos_inf, a.neg_inf + b.neg_inf,
                  min(a.kmin, b.kmin), max(a.kmax, b.kmax), a.s1 + b.s1, a.s2 + b.s2);
}

fn write_partial(wid: u32, t: Thread) {
    partials[params.out_base + wid] = Partial(
        t.count, t.nan, t.pos_inf, t.neg_inf, t.kmin, t.kmax, t.s1, t.s2,
    );
}
