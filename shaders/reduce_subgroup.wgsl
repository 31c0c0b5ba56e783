// microbatch.reduce, entry point for adapters with SUBGROUP: each subgroup combines its threads
// with a butterfly of subgroup shuffles (no workgroup memory, no barriers), then thread 0 merges
// the subgroups' results in order. Appended to reduce_common.wgsl by the host.

fn shuffle_xor(t: Thread, mask: u32) -> Thread {
    let m = Moments(
        subgroupShuffleXor(t.m.n, mask),
        subgroupShuffleXor(t.m.p, mask),
        subgroupShuffleXor(t.m.t, mask),
        subgroupShuffleXor(t.m.m2, mask),
    );
    return Thread(m, subgroupShuffleXor(t.nan, mask), subgroupShuffleXor(t.pos_inf, mask),
                  subgroupShuffleXor(t.neg_inf, mask), subgroupShuffleXor(t.kmin, mask),
                  subgroupShuffleXor(t.kmax, mask));
}

@compute @workgroup_size(WG_SIZE)
fn reduce(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(num_subgroups) n_sg: u32,
) {
    var t = reduce_thread(lid.x, wid.x, nwg.x);
    for (var mask = 1u; mask < sg_size; mask <<= 1u) {
        // The lower lane keeps its own state first, so lane 0 merges in index order.
        let other = shuffle_xor(t, mask);
        if ((lane & mask) == 0u) {
            t = combine(t, other);
        } else {
            t = combine(other, t);
        }
    }
    if (lane == 0u) {
        wg_store(sg, t);
    }
    workgroupBarrier();

    if (lid.x == 0u) {
        var all = wg_load(0u);
        for (var i = 1u; i < n_sg; i++) {
            all = combine(all, wg_load(i));
        }
        finish_partial(wid.x, all);
    }
}
