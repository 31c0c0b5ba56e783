// microbatch.reduce, entry point for any adapter: threads merge through a tree in workgroup
// memory (log2(WG_SIZE) levels). Appended to reduce_common.wgsl by the host.

@compute @workgroup_size(WG_SIZE)
fn reduce(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let t = lid.x;
    wg_store(t, reduce_thread(t, wid.x, nwg.x));
    workgroupBarrier();

    for (var half = WG_SIZE / 2u; half > 0u; half >>= 1u) {
        if (t < half) {
            wg_store(t, combine(wg_load(t), wg_load(t + half)));
        }
        workgroupBarrier();
    }

    if (t == 0u) {
        finish_partial(wid.x, wg_load(0u));
    }
}
