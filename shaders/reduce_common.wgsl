// microbatch.reduce, common part: one micro-batch (or one binding-sized piece of it) → one Partial
// per workgroup. The host appends a few lines of glue choosing where the slow path runs
// (reduce_thread_inline, or reduce_thread_deferred plus the `fixup` entry point of
// reduce_fixup.wgsl) and one of two entry points: reduce_tree.wgsl (workgroup memory tree, any
// adapter) or reduce_subgroup.wgsl (subgroup shuffles, adapters with SUBGROUP); it may write the
// loops marked //#loads and //#each out for a fixed VEC_PER_THREAD (src/backend/gpu/kernel.rs,
// `unroll`). Needs SHADER_F64: the moments are accumulated in f64.
//
// Kept in sync with src/backend/gpu/mod.rs (GpuParams, GpuPartial) and src/numerics.rs, whose
// block scheme this is (the CPU backend runs the same scheme on its blocks):
// - Each thread reduces tiles of 4·VEC_PER_THREAD values held in registers: a first f32 pass gives
//   the tile's pivot p (an approximate mean, rounded to f32), a second pass accumulates
//   t = Σ(x − p) and q = Σ(x − p)² in f64, where x − p is exact. The tile's sum is n·p + t and its
//   M2 = q − t²/n. No shift is sampled, nothing is scaled: the error is relative to the tile's own
//   spread, wherever the data sit.
// - A thread moves each tile's sums to one pivot P (its first tile's): T = Σ(x − P),
//   Q = Σ(x − P)², no division per tile. Threads and subgroups then merge with Chan's formula in
//   a pivot frame: a state holds n, a pivot P (an f32 value), T and M2, so that the difference
//   of two means is formed from exact pivot differences plus small terms: its error is relative
//   to the spread, not to the magnitude. The host turns n·P + T into a double-double exactly.
// - Nothing here relies on exact rounding tricks (TwoSum and the like): drivers may rewrite float
//   expressions algebraically (Mesa does, for SPIR-V without NoContraction), so every formula
//   is one whose error bound survives reordering. An f32 pivot sum that overflows is caught from
//   its bits and sends the thread to the classified path, which sums in f64.
// - WGSL lets an implementation assume floats are finite and may flush f32 subnormals, so NaN,
//   ±inf and subnormals are recognised from the bits. The fast path only tracks the key range
//   (an order-preserving u32 key: exact min/max) and whether a subnormal was seen; a thread that
//   met a non-finite value or a subnormal redoes its share with every value classified and
//   subnormals converted to f64 exactly from their bits.

// Invocations per workgroup (a power of two; checked on the host).
override WG_SIZE: u32 = 256u;
// vec4 loads each thread issues together per tile (1..=MAX_VPT; checked on the host).
override VEC_PER_THREAD: u32 = 8u;
const MAX_VPT: u32 = 16u;

// Series one dispatch can reduce side by side (a segmented reduction).
const MAX_SEGMENTS: u32 = 32u;

struct Params {
    len: u32,        // valid f32 elements in `input` (segments == 0)
    out_base: u32,   // index of this dispatch's first partial in `partials`
    segments: u32,   // 0: `input` is one series; else the series in `segment`
    _pad1: u32,
    // Segment i: (its first vec4 in `input`, its valid f32 elements, its first workgroup, its
    // workgroups), by increasing first workgroup from 0; each workgroup reduces within one
    // segment exactly as a dispatch over that segment alone would.
    segment: array<vec4<u32>, MAX_SEGMENTS>,
}

struct Partial {
    count: u32,      // finite values
    nan_count: u32,
    pos_inf: u32,
    neg_inf: u32,
    min_key: u32,    // order-preserving key of the smallest finite value (0xffffffff: none)
    max_key: u32,    // order-preserving key of the largest finite value (0: none)
    pivot: f32,      // P, the workgroup's pivot
    dirty: u32,      // 1: the slow path is still to run on this workgroup (deferred variant)
    t: f64,          // Σ(x − P) over finite values: the sum is count·P + t
    m2: f64,         // Σ(x − mean)² over finite values
}

@group(0) @binding(0) var<storage, read> input: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> partials: array<Partial>;
@group(0) @binding(2) var<uniform> params: Params;

const ABS_MASK: u32 = 0x7fffffffu;
const INF_BITS: u32 = 0x7f800000u;
const NEG_INF_BITS: u32 = 0xff800000u;
const MANTISSA: u32 = 0x007fffffu;
// Keys of f32::MAX and -f32::MAX: a finite value's key lies between them.
const MAX_FINITE_KEY: u32 = 0xff7fffffu;
const MIN_FINITE_KEY: u32 = 0x00800000u;

// Order-preserving map from f32 bits to u32: negative values flip all bits, positive values set
// the sign bit. Same function as `order_key` in src/numerics.rs.
fn order_key(b: vec4<u32>) -> vec4<u32> {
    let neg = bitcast<vec4<u32>>(bitcast<vec4<i32>>(b) >> vec4<u32>(31u));
    return b ^ (neg | vec4<u32>(0x80000000u));
}

// ---- moments in a pivot frame (src/numerics.rs) ----

// n finite values, a pivot P (an f32 value, held in f64), T = Σ(x − P), M2 = Σ(x − mean)².
struct Moments {
    n: u32,
    p: f64,
    t: f64,
    m2: f64,
}

fn moments_empty() -> Moments {
    return Moments(0u, 0.0, 0.0, 0.0);
}

// Chan, Golub and LeVeque's merge, kept in a's frame: P_b − P_a is exact (two f32 values in f64),
// so δ = (P_b − P_a) + T_b/n_b − T_a/n_a carries an error relative to the spread.
fn merge(a: Moments, b: Moments) -> Moments {
    if (b.n == 0u) {
        return a;
    }
    if (a.n == 0u) {
        return b;
    }
    let na = f64(a.n);
    let nb = f64(b.n);
    let off = b.p - a.p;
    let delta = off + (b.t / nb - a.t / na);
    let m2 = a.m2 + b.m2 + delta * delta * (na / (na + nb) * nb);
    return Moments(a.n + b.n, a.p, a.t + (b.t + nb * off), m2);
}

// A tile's moments from its pivot sums: M2 = q − t²/n.
fn tile_moments(n: u32, p: f64, t: f64, q: f64) -> Moments {
    return Moments(n, p, t, max(q - t * (t / f64(n)), 0.0));
}

// ---- per-thread reduction ----

// One thread's share: its moments, the non-finite counts and the key range.
struct Thread {
    m: Moments,
    nan: u32,
    pos_inf: u32,
    neg_inf: u32,
    kmin: u32,
    kmax: u32,
}

fn count4(b: vec4<bool>) -> u32 {
    let v = select(vec4<u32>(0u), vec4<u32>(1u), b);
    return (v.x + v.y) + (v.z + v.w);
}

// The value of finite f32 bits in f64, exact even for subnormals (which an implementation may
// flush in a plain conversion).
fn exact_f64(b: u32) -> f64 {
    let a = b & ABS_MASK;
    var v: f64;
    if (a <= MANTISSA) {
        v = ldexp(f64(a), -149);
    } else {
        v = f64(bitcast<f32>(a));
    }
    return select(v, -v, b != a);
}

// Adds the classified, valid lanes of `n_vec` vec4s starting at `i` (stepping WG_SIZE) to `s`,
// as one tile (two passes in f64 over the finite values; the vec4s are read twice: this path is
// rare).
fn tile_general(s: ptr<function, Thread>, base: u32, i: u32, n_vec: u32, len: u32) {
    var sum = 0.0lf;
    var n = 0u;
    for (var k = 0u; k < n_vec; k++) {
        let j = i + k * WG_SIZE;
        let bits = bitcast<vec4<u32>>(input[base + j]);
        let valid = vec4<u32>(j * 4u) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(len);
        let abs_bits = bits & vec4<u32>(ABS_MASK);
        let finite = valid & (abs_bits < vec4<u32>(INF_BITS));
        (*s).nan += count4(valid & (abs_bits > vec4<u32>(INF_BITS)));
        (*s).pos_inf += count4(valid & (bits == vec4<u32>(INF_BITS)));
        (*s).neg_inf += count4(valid & (bits == vec4<u32>(NEG_INF_BITS)));
        let key = order_key(bits);
        let lo = select(vec4<u32>(0xffffffffu), key, finite);
        let hi = select(vec4<u32>(0u), key, finite);
        (*s).kmin = min((*s).kmin, min(min(lo.x, lo.y), min(lo.z, lo.w)));
        (*s).kmax = max((*s).kmax, max(max(hi.x, hi.y), max(hi.z, hi.w)));
        n += count4(finite);
        for (var l = 0u; l < 4u; l++) {
            if (finite[l]) {
                sum += exact_f64(bits[l]);
            }
        }
    }
    if (n == 0u) {
        return;
    }
    // Rounded to f32 (like the fast path's pivot) so that x − p is exact in f64.
    let p = f64(f32(sum / f64(n)));
    var t = 0.0lf;
    var q = 0.0lf;
    for (var k = 0u; k < n_vec; k++) {
        let j = i + k * WG_SIZE;
        let bits = bitcast<vec4<u32>>(input[base + j]);
        let valid = vec4<u32>(j * 4u) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(len);
        let finite = valid & ((bits & vec4<u32>(ABS_MASK)) < vec4<u32>(INF_BITS));
        for (var l = 0u; l < 4u; l++) {
            if (finite[l]) {
                let d = exact_f64(bits[l]) - p;
                t += d;
                q = fma(d, d, q);
            }
        }
    }
    (*s).m = merge((*s).m, tile_moments(n, p, t, q));
}

// Where a thread's tiles lie: tiles of VEC_PER_THREAD vec4s first + k·WG_SIZE for
// first = (wid·VEC_PER_THREAD)·WG_SIZE + lid, stepping by the whole grid — of the workgroup's
// segment (indices relative to `base`, `wid` and the grid the segment's own).
struct Geometry {
    base: u32,     // the segment's first vec4 in `input`
    len: u32,      // valid f32 elements
    n_full: u32,   // whole vec4s
    first: u32,    // the thread's first vec4
    stride: u32,   // vec4s between a thread's tiles
    last_k: u32,   // offset of a tile's last vec4 from its first
    wid: u32,      // the workgroup within its segment
}

fn geometry(lid: u32, wid: u32, nwg: u32) -> Geometry {
    var base = 0u;
    var len = params.len;
    var w = wid;
    var n = nwg;
    if (params.segments > 0u) {
        // The last segment starting at or before this workgroup (uniform per workgroup).
        var s = 0u;
        for (var i = 1u; i < params.segments; i++) {
            if (params.segment[i].z <= wid) {
                s = i;
            }
        }
        let seg = params.segment[s];
        base = seg.x;
        len = seg.y;
        w = wid - seg.z;
        n = seg.w;
    }
    let tile = WG_SIZE * VEC_PER_THREAD;
    return Geometry(base, len, len / 4u, w * tile + lid, n * tile, (VEC_PER_THREAD - 1u) * WG_SIZE, w);
}

// A thread's whole tiles by the fast path: their moments and key range, whether every value
// was finite and normal (else the moments are not to be used), and where the thread stopped.
struct Fast {
    m: Moments,
    kmin: u32,
    kmax: u32,
    clean: bool,
    next: u32,
}

fn whole_tiles(g: Geometry) -> Fast {
    // Scaling each value by 1/n before the f32 pivot sum keeps it from overflowing.
    let inv_n = 1.0 / f32(4u * VEC_PER_THREAD);
    let tile_n = 4u * VEC_PER_THREAD;

    // The thread's tiles in one frame around its first tile's pivot P: T = Σ(x − P) and
    // Q = Σ(x − P)², each tile's sums moved to P exactly in exact arithmetic (no division on the
    // hot path). Since P is a tile mean, n(mean − P)² ≤ (tiles)·M2, which bounds Q against M2
    // (the host caps a thread at MAX_THREAD_TILES tiles: src/numerics.rs).
    var tiles = 0u;
    var pivot = 0.0lf;
    var big_t = 0.0lf;
    var big_q = 0.0lf;
    var kmin = 0xffffffffu;
    var kmax = 0u;
    // Smallest (|bits| − 1) seen: below MANTISSA exactly when a subnormal was met.
    var sub = 0xffffffffu;
    // Largest |bits| of a tile pivot: INF_BITS or more when a pivot sum overflowed.
    var big = 0u;
    //#array
    var v: array<vec4<f32>, MAX_VPT>;
    var i = g.first;
    // Whole tiles: VEC_PER_THREAD loads with no bounds checks, all issued before any is used
    // (the host may unroll the three loops marked below: KernelShape::loads).
    for (; i + g.last_k < g.n_full; i += g.stride) {
        //#loads
        for (var k = 0u; k < VEC_PER_THREAD; k++) {
            v[k] = input[g.base + i + k * WG_SIZE];
        }
        //#end
        var s4 = vec4<f32>(0.0);
        //#each
        for (var k = 0u; k < VEC_PER_THREAD; k++) {
            s4 += v[k] * inv_n;
            let bits = bitcast<vec4<u32>>(v[k]);
            let key = order_key(bits);
            kmin = min(kmin, min(min(key.x, key.y), min(key.z, key.w)));
            kmax = max(kmax, max(max(key.x, key.y), max(key.z, key.w)));
            let a = (bits & vec4<u32>(ABS_MASK)) - vec4<u32>(1u);
            sub = min(sub, min(min(a.x, a.y), min(a.z, a.w)));
        }
        //#end
        let pf = (s4.x + s4.y) + (s4.z + s4.w);
        // A compiler may factor the 1/n out of the sum (Mesa does), which can overflow for
        // values near f32::MAX: an infinite or NaN pivot marks the thread for the slow path.
        big = max(big, bitcast<u32>(pf) & ABS_MASK);
        let p = f64(pf);
        var t = vec4<f64>(0.0);
        var q = vec4<f64>(0.0);
        //#each
        for (var k = 0u; k < VEC_PER_THREAD; k++) {
            let d = vec4<f64>(v[k]) - vec4<f64>(p);
            t += d;
            q = fma(d, d, q);
        }
        //#end
        if (tiles == 0u) {
            pivot = p;
        }
        let off = p - pivot;
        let tt = (t.x + t.y) + (t.z + t.w);
        let qq = (q.x + q.y) + (q.z + q.w);
        let nt = f64(tile_n);
        big_t += tt + nt * off;
        big_q += qq + off * (2.0 * tt + nt * off);
        tiles += 1u;
    }
    var m = moments_empty();
    if (tiles > 0u) {
        m = tile_moments(tiles * tile_n, pivot, big_t, big_q);
    }
    let clean = kmin >= MIN_FINITE_KEY && kmax <= MAX_FINITE_KEY && sub >= MANTISSA
        && big < INF_BITS;
    return Fast(m, kmin, kmax, clean, i);
}

// Every whole tile of the thread with each value classified (the slow path).
fn whole_tiles_general(s: ptr<function, Thread>, g: Geometry) {
    for (var j = g.first; j + g.last_k < g.n_full; j += g.stride) {
        tile_general(s, g.base, j, VEC_PER_THREAD, g.len);
    }
}

// The thread's partial tile at the end of the batch (at most one, starting at `next`), and in
// the segment's thread 0 the last vec4 when it is partial.
fn batch_end(s: ptr<function, Thread>, g: Geometry, next: u32, lid: u32) {
    if (next < g.n_full) {
        tile_general(s, g.base, next, (g.n_full - next + WG_SIZE - 1u) / WG_SIZE, g.len);
    }
    if (g.len % 4u != 0u && lid == 0u && g.wid == 0u) {
        // The last vec4 holds len % 4 valid lanes; the rest may be stale data from an earlier
        // batch or the next segment's first values.
        tile_general(s, g.base, g.n_full, 1u, g.len);
    }
}

// Slow path inline: the thread's whole share, a thread that met a NaN, an infinity or a
// subnormal redoing its whole tiles with every value classified.
fn reduce_thread_inline(lid: u32, wid: u32, nwg: u32) -> Thread {
    let g = geometry(lid, wid, nwg);
    let f = whole_tiles(g);
    var s = Thread(f.m, 0u, 0u, 0u, f.kmin, f.kmax);
    if (!f.clean) {
        s = Thread(moments_empty(), 0u, 0u, 0u, 0xffffffffu, 0u);
        whole_tiles_general(&s, g);
    }
    batch_end(&s, g, f.next, lid);
    return s;
}

// Slow path deferred to the `fixup` entry point (reduce_fixup.wgsl): whole tiles only, `nan`
// counting the threads that were not clean (the partial is marked dirty from it). None of
// tile_general's code or registers are in this kernel.
fn reduce_thread_deferred(lid: u32, wid: u32, nwg: u32) -> Thread {
    let f = whole_tiles(geometry(lid, wid, nwg));
    return Thread(f.m, select(1u, 0u, f.clean), 0u, 0u, f.kmin, f.kmax);
}

fn combine(a: Thread, b: Thread) -> Thread {
    return Thread(merge(a.m, b.m), a.nan + b.nan, a.pos_inf + b.pos_inf, a.neg_inf + b.neg_inf,
                  min(a.kmin, b.kmin), max(a.kmax, b.kmax));
}

// Workgroup memory for combining the threads' (or subgroups') results; WG_SIZE entries cover
// either entry point.
var<workgroup> wg_n: array<u32, WG_SIZE>;
var<workgroup> wg_p: array<f64, WG_SIZE>;
var<workgroup> wg_t: array<f64, WG_SIZE>;
var<workgroup> wg_m2: array<f64, WG_SIZE>;
var<workgroup> wg_nan: array<u32, WG_SIZE>;
var<workgroup> wg_pos_inf: array<u32, WG_SIZE>;
var<workgroup> wg_neg_inf: array<u32, WG_SIZE>;
var<workgroup> wg_min: array<u32, WG_SIZE>;
var<workgroup> wg_max: array<u32, WG_SIZE>;

fn wg_store(i: u32, t: Thread) {
    wg_n[i] = t.m.n;
    wg_p[i] = t.m.p;
    wg_t[i] = t.m.t;
    wg_m2[i] = t.m.m2;
    wg_nan[i] = t.nan;
    wg_pos_inf[i] = t.pos_inf;
    wg_neg_inf[i] = t.neg_inf;
    wg_min[i] = t.kmin;
    wg_max[i] = t.kmax;
}

fn wg_load(i: u32) -> Thread {
    return Thread(Moments(wg_n[i], wg_p[i], wg_t[i], wg_m2[i]), wg_nan[i], wg_pos_inf[i],
                  wg_neg_inf[i], wg_min[i], wg_max[i]);
}

// Combines every invocation's state through a tree in workgroup memory (log2(WG_SIZE) levels,
// in index order); the result is at index 0. Called by every invocation, in uniform control.
fn tree_combine(t: u32, mine: Thread) {
    wg_store(t, mine);
    workgroupBarrier();
    for (var half = WG_SIZE / 2u; half > 0u; half >>= 1u) {
        if (t < half) {
            wg_store(t, combine(wg_load(t), wg_load(t + half)));
        }
        workgroupBarrier();
    }
}

fn write_partial(wid: u32, t: Thread, dirty: u32) {
    partials[params.out_base + wid] = Partial(
        t.m.n, t.nan, t.pos_inf, t.neg_inf, t.kmin, t.kmax, f32(t.m.p), dirty, t.m.t, t.m.m2,
    );
}
