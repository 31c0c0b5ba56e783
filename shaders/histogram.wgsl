// The quantile sketch's counts, built on the device over a batch already uploaded for the
// reduction (src/sketch.rs; src/backend/gpu/sketch.rs reads the counts back and folds them into
// the sketch's stores). An f32's bucket is its bits shifted: sign, exponent and the top `m`
// mantissa bits, one atomic increment per value into the slot's histogram of 2^(9+m) counters.
// Infinities and NaN (exponent 255) are not counted: the partial counts them. Zeros are counted
// apart, and subnormals (exponent 0) by their leading one's position and the `m` bits after
// it: the bucket the value has as an f64 (where it is normal), which the host forms.
//
// A slot's counters, from `main`: 2^(9+m) for normal values (index = bits >> (23 - m)), then
// at `side` 2 * 23 * 2^m for subnormals (index = ((sign * 23 + lead) << m) + top), then one at
// `zeros`.

struct HistParams {
    // Values in the batch.
    len: u32,
    // First counter of the slot's normal buckets, of its subnormal buckets, its zero counter.
    main: u32,
    side: u32,
    zeros: u32,
    // 23 - m, and m.
    shift: u32,
    m: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> input: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> hist: array<atomic<u32>>;
@group(0) @binding(2) var<uniform> params: HistParams;

const WG: u32 = 256u;

fn count(b: u32) {
    let e = (b >> 23u) & 0xffu;
    if e == 255u {
        return;
    }
    if e != 0u {
        atomicAdd(&hist[params.main + (b >> params.shift)], 1u);
        return;
    }
    let mant = b & 0x7fffffu;
    if mant == 0u {
        atomicAdd(&hist[params.zeros], 1u);
        return;
    }
    // A subnormal: value = mant * 2^-149 = 2^(lead - 149) * 1.tail.
    let lead = firstLeadingBit(mant);
    let tail = mant ^ (1u << lead);
    var top: u32;
    if lead >= params.m {
        top = tail >> (lead - params.m);
    } else {
        top = tail << (params.m - lead);
    }
    let sign = b >> 31u;
    atomicAdd(&hist[params.side + ((sign * 23u + lead) << params.m) + top], 1u);
}

@compute @workgroup_size(WG)
fn histogram(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let n_vec = (params.len + 3u) / 4u;
    let whole = params.len / 4u;
    let stride = groups.x * WG;
    for (var i = gid.x; i < n_vec; i += stride) {
        let v = input[i];
        if i < whole {
            count(v.x);
            count(v.y);
            count(v.z);
            count(v.w);
        } else {
            // The batch's last, partial vec4: what follows its values is not data.
            let rest = params.len - whole * 4u;
            count(v.x);
            if rest > 1u {
                count(v.y);
            }
            if rest > 2u {
                count(v.z);
            }
        }
    }
}
