// microbatch.copy: the device-to-device copy that `bench` uses as the GPU's memory ceiling.
// Same access pattern as reduce_common.wgsl (VEC_PER_THREAD vec4 loads per thread per grid
// step, coalesced across the workgroup), so the ceiling is what this style of WGSL kernel can
// move, not what a vendor's copy engine can.

override WG_SIZE: u32 = 256u;
override VEC_PER_THREAD: u32 = 4u;

@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;

@compute @workgroup_size(WG_SIZE)
fn copy(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let n = arrayLength(&src);
    let tile = WG_SIZE * VEC_PER_THREAD;
    let stride = nwg.x * tile;
    for (var i = wid.x * tile + lid.x; i < n; i += stride) {
        for (var k = 0u; k < VEC_PER_THREAD; k++) {
            let j = i + k * WG_SIZE;
            if (j < n) {
                dst[j] = src[j];
            }
        }
    }
}
