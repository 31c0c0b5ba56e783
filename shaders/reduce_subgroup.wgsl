// microbatch.reduce, entry point for adapters with SUBGROUP: each subgroup combines its threads
// with subgroup operations (no workgroup memory, no barriers), then thread 0 adds up the
// subgroups' results in order. Appended to reduce_common.wgsl by the host.

var<workgroup> sg_s1: array<f32, WG_SIZE>;
var<workgroup> sg_s2: array<f32, WG_SIZE>;
var<workgroup> sg_count: array<u32, WG_SIZE>;
var<workgroup> sg_nan: array<u32, WG_SIZE>;
var<workgroup> sg_pos_inf: array<u32, WG_SIZE>;
var<workgroup> sg_neg_inf: array<u32, WG_SIZE>;
var<workgroup> sg_min: array<u32, WG_SIZE>;
var<workgroup> sg_max: array<u32, WG_SIZE>;

@compute @workgroup_size(WG_SIZE)
fn reduce(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(num_subgroups) n_sg: u32,
) {
    let me = reduce_thread(lid.x, wid.x, nwg.x);
    let s1 = subgroupAdd(me.s1);
    let s2 = subgroupAdd(me.s2);
    let count = subgroupAdd(me.count);
    let nan = subgroupAdd(me.nan);
    let pos_inf = subgroupAdd(me.pos_inf);
    let neg_inf = subgroupAdd(me.neg_inf);
    let kmin = subgroupMin(me.kmin);
    let kmax = subgroupMax(me.kmax);
    if (lane == 0u) {
        sg_s1[sg] = s1;
        sg_s2[sg] = s2;
        sg_count[sg] = count;
        sg_nan[sg] = nan;
        sg_pos_inf[sg] = pos_inf;
        sg_neg_inf[sg] = neg_inf;
        sg_min[sg] = kmin;
        sg_max[sg] = kmax;
    }
    workgroupBarrier();

    if (lid.x == 0u) {
        var t = Thread(0u, 0u, 0u, 0u, 0xffffffffu, 0u, 0.0, 0.0);
        for (var i = 0u; i < n_sg; i++) {
            t.count += sg_count[i];
            t.nan += sg_nan[i];
            t.pos_inf += sg_pos_inf[i];
            t.neg_inf += sg_neg_inf[i];
            t.kmin = min(t.kmin, sg_min[i]);
            t.kmax = max(t.kmax, sg_max[i]);
            t.s1 += sg_s1[i];
            t.s2 += sg_s2[i];
        }
        write_partial(wid.x, t);
    }
}
