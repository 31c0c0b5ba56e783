// microbatch.reduce, entry point for adapters with SUBGROUP: each subgroup combines its threads
// with subgroup operations (no workgroup memory, no barriers), then thread 0 adds up the
// subgroups' results in order. Appended to reduce_common.wgsl by the host.

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
    let all = Thread(
        subgroupAdd(me.count), subgroupAdd(me.nan), subgroupAdd(me.pos_inf),
        subgroupAdd(me.neg_inf), subgroupMin(me.kmin), subgroupMax(me.kmax),
        subgroupAdd(me.s1), subgroupAdd(me.s2),
    );
    if (lane == 0u) {
        wg_store(sg, all);
    }
    workgroupBarrier();

    if (lid.x == 0u) {
        var t = wg_load(0u);
        for (var i = 1u; i < n_sg; i++) {
            t = combine(t, wg_load(i));
        }
        write_partial(wid.x, t);
    }
}
