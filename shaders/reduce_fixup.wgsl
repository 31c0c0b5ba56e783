// microbatch.reduce, second entry point of the deferred-slow-path variant: dispatched right after
// `reduce` over the same bindings and grid, it finishes what the fast kernel left out, so that
// none of tile_general's code or registers weigh on the fast kernel. Appended by the host.
//
// A workgroup has work here only when
// - its partial is marked dirty (one of its threads met a NaN, an infinity or a subnormal, or a
//   pivot sum overflowed): it redoes its whole share with every value classified;
// - its tiles straddle the end of the whole vec4s (a partial tile): at most one workgroup;
// - it is workgroup 0 and the batch ends in a partial vec4.
// Every other workgroup returns at once, so the pass costs one read per workgroup.

var<workgroup> wg_flag: u32;

@compute @workgroup_size(WG_SIZE)
fn fixup(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let t = lid.x;
    let w = wid.x;
    let g = geometry(t, w, nwg.x);
    let slot = params.out_base + w;
    if (t == 0u) {
        wg_flag = partials[slot].dirty;
    }
    let dirty = workgroupUniformLoad(&wg_flag) != 0u;

    // The workgroup's last stride with data: its tiles there start at `base`; they are partial
    // when they reach past the whole vec4s.
    let tile = WG_SIZE * VEC_PER_THREAD;
    let wg_first = g.wid * tile;
    var straddle = false;
    var base = 0u;
    if (wg_first < g.n_full) {
        base = wg_first + (g.n_full - 1u - wg_first) / g.stride * g.stride;
        straddle = base + tile > g.n_full;
    }
    let tail = g.wid == 0u && g.len % 4u != 0u;
    if (!dirty && !straddle && !tail) {
        return;
    }

    var s = Thread(moments_empty(), 0u, 0u, 0u, 0xffffffffu, 0u);
    if (dirty) {
        whole_tiles_general(&s, g);
    }
    // The thread's tile at base + t, if partial, is where the fast kernel stopped.
    var next = g.n_full;
    if (straddle && base + t + g.last_k >= g.n_full) {
        next = base + t;
    }
    batch_end(&s, g, next, t);

    tree_combine(t, s);
    if (t == 0u) {
        var all = wg_load(0u);
        if (!dirty) {
            // The fast kernel's whole tiles, then what was left out.
            let p = partials[slot];
            let fast = Thread(Moments(p.count, f64(p.pivot), p.t, p.m2), 0u, 0u, 0u, p.min_key,
                              p.max_key);
            all = combine(fast, all);
        }
        write_partial(w, all, 0u);
    }
}
