// microbatch.reduce: one micro-batch (or one binding-sized piece of it) → one Partial per workgroup.
//
// Kept in sync with src/backend/gpu.rs (GpuParams, GpuPartial) and src/backend/cpu.rs, which runs
// the same lane logic on the CPU so the two backends can be compared value for value.
//
// Numerics (DESIGN.md):
// - WGSL lets an implementation assume floats are finite, so NaN and ±inf are classified from the
//   bits with integer operations, counted, and kept out of the float arithmetic altogether.
// - min/max use an order-preserving u32 key of the bits: exact, and immune to subnormal flushing.
// - Moments are shifted sums Σ(x−K), Σ(x−K)² with K (params.shift) chosen by the host near the
//   batch's median, so Σ(x−K)² never cancels catastrophically. Each vec4 lane accumulates
//   sequentially, then the workgroup combines its threads with a tree: the error of s2 is about
//   (elements per lane + log2(WG_SIZE)) · ε.

override WG_SIZE: u32 = 256u;

struct Params {
    len: u32,        // valid f32 elements in `input`
    shift: f32,      // K
    out_base: u32,   // index of this dispatch's first partial in `partials`
    _pad: u32,
}

struct Partial {
    count: u32,      // finite values
    nan_count: u32,
    pos_inf: u32,
    neg_inf: u32,
    min_key: u32,    // order-preserving key of the smallest finite value (0xffffffff: none)
    max_key: u32,    // order-preserving key of the largest finite value (0: none)
    s1: f32,         // Σ(x−K) over finite values
    s2: f32,         // Σ(x−K)² over finite values
}

@group(0) @binding(0) var<storage, read> input: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> partials: array<Partial>;
@group(0) @binding(2) var<uniform> params: Params;

var<workgroup> wg_s1: array<f32, WG_SIZE>;
var<workgroup> wg_s2: array<f32, WG_SIZE>;
var<workgroup> wg_count: array<u32, WG_SIZE>;
var<workgroup> wg_nan: array<u32, WG_SIZE>;
var<workgroup> wg_pos_inf: array<u32, WG_SIZE>;
var<workgroup> wg_neg_inf: array<u32, WG_SIZE>;
var<workgroup> wg_min: array<u32, WG_SIZE>;
var<workgroup> wg_max: array<u32, WG_SIZE>;

const ABS_MASK: u32 = 0x7fffffffu;
const INF_BITS: u32 = 0x7f800000u;
const NEG_INF_BITS: u32 = 0xff800000u;

// Order-preserving map from f32 bits to u32: negative values flip all bits, positive values set
// the sign bit. Same function as `order_key` in src/backend/cpu.rs.
fn order_key(b: vec4<u32>) -> vec4<u32> {
    let neg = (b >> vec4<u32>(31u)) == vec4<u32>(1u);
    return select(b | vec4<u32>(0x80000000u), ~b, neg);
}

@compute @workgroup_size(WG_SIZE)
fn reduce(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let len = params.len;
    let shift = vec4<f32>(params.shift);
    let n_vec = (len + 3u) / 4u;
    let stride = nwg.x * WG_SIZE;

    var s1 = vec4<f32>(0.0);
    var s2 = vec4<f32>(0.0);
    var count = vec4<u32>(0u);
    var nan = vec4<u32>(0u);
    var pos_inf = vec4<u32>(0u);
    var neg_inf = vec4<u32>(0u);
    var kmin = vec4<u32>(0xffffffffu);
    var kmax = vec4<u32>(0u);

    for (var i = wid.x * WG_SIZE + lid.x; i < n_vec; i += stride) {
        let x = input[i];
        let bits = bitcast<vec4<u32>>(x);
        let abs_bits = bits & vec4<u32>(ABS_MASK);
        // Lanes past the end of the batch (the last vec4 may be partly stale) count as nothing.
        let in_range = vec4<u32>(i * 4u) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(len);
        let finite = in_range & (abs_bits < vec4<u32>(INF_BITS));
        let d = select(vec4<f32>(0.0), x - shift, finite);
        s1 += d;
        s2 += d * d;
        count += select(vec4<u32>(0u), vec4<u32>(1u), finite);
        nan += select(vec4<u32>(0u), vec4<u32>(1u), in_range & (abs_bits > vec4<u32>(INF_BITS)));
        pos_inf += select(vec4<u32>(0u), vec4<u32>(1u), in_range & (bits == vec4<u32>(INF_BITS)));
        neg_inf += select(vec4<u32>(0u), vec4<u32>(1u), in_range & (bits == vec4<u32>(NEG_INF_BITS)));
        let key = order_key(bits);
        kmin = min(kmin, select(vec4<u32>(0xffffffffu), key, finite));
        kmax = max(kmax, select(vec4<u32>(0u), key, finite));
    }

    let t = lid.x;
    wg_s1[t] = (s1.x + s1.y) + (s1.z + s1.w);
    wg_s2[t] = (s2.x + s2.y) + (s2.z + s2.w);
    wg_count[t] = count.x + count.y + count.z + count.w;
    wg_nan[t] = nan.x + nan.y + nan.z + nan.w;
    wg_pos_inf[t] = pos_inf.x + pos_inf.y + pos_inf.z + pos_inf.w;
    wg_neg_inf[t] = neg_inf.x + neg_inf.y + neg_inf.z + neg_inf.w;
    wg_min[t] = min(min(kmin.x, kmin.y), min(kmin.z, kmin.w));
    wg_max[t] = max(max(kmax.x, kmax.y), max(kmax.z, kmax.w));
    workgroupBarrier();

    // Tree over the workgroup; WG_SIZE is a power of two (checked on the host).
    for (var half = WG_SIZE / 2u; half > 0u; half >>= 1u) {
        if (t < half) {
            wg_s1[t] += wg_s1[t + half];
            wg_s2[t] += wg_s2[t + half];
            wg_count[t] += wg_count[t + half];
            wg_nan[t] += wg_nan[t + half];
            wg_pos_inf[t] += wg_pos_inf[t + half];
            wg_neg_inf[t] += wg_neg_inf[t + half];
            wg_min[t] = min(wg_min[t], wg_min[t + half]);
            wg_max[t] = max(wg_max[t], wg_max[t + half]);
        }
        workgroupBarrier();
    }

    if (t == 0u) {
        partials[params.out_base + wid.x] = Partial(
            wg_count[0], wg_nan[0], wg_pos_inf[0], wg_neg_inf[0],
            wg_min[0], wg_max[0], wg_s1[0], wg_s2[0],
        );
    }
}
