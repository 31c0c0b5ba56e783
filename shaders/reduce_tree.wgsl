// microbatch.reduce, entry point for any adapter: threads merge through a tree in workgroup
// memory (log2(WG_SIZE) levels). Appended to reduce_common.wgsl by the host.

@compute @workgroup_size(WG_SIZE)
fn reduce(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let t = lid.x;
    tree_combine(t, reduce_thread(t, wid.x, nwg.x));

    if (t == 0u) {
        finish_partial(wid.x, wg_load(0u));
    }
}
