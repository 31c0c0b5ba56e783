// microbatch.reduce, entry point for any adapter: threads combine through a tree in workgroup
// memory (log2(WG_SIZE) levels). Appended to reduce_common.wgsl by the host.

var<workgroup> wg_s1: array<f32, WG_SIZE>;
var<workgroup> wg_s2: array<f32, WG_SIZE>;
var<workgroup> wg_count: array<u32, WG_SIZE>;
var<workgroup> wg_nan: array<u32, WG_SIZE>;
var<workgroup> wg_pos_inf: array<u32, WG_SIZE>;
var<workgroup> wg_neg_inf: array<u32, WG_SIZE>;
var<workgroup> wg_min: array<u32, WG_SIZE>;
var<workgroup> wg_max: array<u32, WG_SIZE>;

@compute @workgroup_size(WG_SIZE)
fn reduce(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let me = reduce_thread(lid.x, wid.x, nwg.x);
    let t = lid.x;
    wg_s1[t] = me.s1;
    wg_s2[t] = me.s2;
    wg_count[t] = me.count;
    wg_nan[t] = me.nan;
    wg_pos_inf[t] = me.pos_inf;
    wg_neg_inf[t] = me.neg_inf;
    wg_min[t] = me.kmin;
    wg_max[t] = me.kmax;
    workgroupBarrier();

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
        write_partial(wid.x, Thread(wg_count[0], wg_nan[0], wg_pos_inf[0], wg_neg_inf[0],
                                    wg_min[0], wg_max[0], wg_s1[0], wg_s2[0]));
    }
}
