//! The fast kernels against [`super::reference`] on random shapes: odd sizes, strides,
//! padding (including asymmetric), dilation, groups, depthwise and pointwise layers, every
//! block size, forward and backward.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::conv2d::{
    backward, backward_in_blocks, backward_into, forward, forward_in_blocks, forward_per_image,
};
use super::gemm::Threads;
use super::im2col::ConvGeometry;
use super::{LayerGrads, Needed, reference};

const ALL: Needed = Needed {
    x: true,
    weight: true,
    bias: true,
};

fn random(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f32], g: &ConvGeometry) {
    assert_eq!(got.len(), want.len(), "{what} length for {g:?}");
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * scale,
            "{what}[{i}]: {a} vs reference {b} for {g:?}"
        );
    }
}

fn assert_grads(got: &LayerGrads, want: &LayerGrads, g: &ConvGeometry) {
    for (what, a, b) in [
        ("dx", &got.x, &want.x),
        ("dweight", &got.weight, &want.weight),
        ("dbias", &got.bias, &want.bias),
    ] {
        assert_eq!(a.is_some(), b.is_some(), "{what} presence");
        if let (Some(a), Some(b)) = (a, b) {
            assert_close(what, a, b, g);
        }
    }
}

/// A random geometry: `kind` 0 general, 1 grouped, 2 depthwise, 3 pointwise.
fn geometry(rng: &mut ChaCha8Rng, kind: usize) -> ConvGeometry {
    let groups = match kind {
        1 => rng.random_range(2..4),
        _ => 1,
    };
    let mut per = rng.random_range(1..4);
    let mut out = groups * rng.random_range(1..5);
    if kind == 2 {
        per = 1;
        out = 0;
    }
    let in_ch = if kind == 2 {
        rng.random_range(2..6)
    } else {
        groups * per
    };
    let groups = if kind == 2 { in_ch } else { groups };
    if kind == 2 {
        out = in_ch;
    }
    let (k, s, d) = if kind == 3 {
        ([1, 1], [1, 1], [1, 1])
    } else {
        (
            [rng.random_range(1..4), rng.random_range(1..4)],
            [rng.random_range(1..3), rng.random_range(1..3)],
            [rng.random_range(1..3), 1],
        )
    };
    let pad = |rng: &mut ChaCha8Rng| {
        if kind == 3 {
            [0, 0]
        } else {
            [rng.random_range(0..3), rng.random_range(0..3)]
        }
    };
    let padding = [pad(rng), pad(rng)];
    let h = rng.random_range(d[0] * (k[0] - 1) + 1..12);
    let w = rng.random_range(d[1] * (k[1] - 1) + 1..12);
    ConvGeometry::new(
        [rng.random_range(1..5), in_ch, h, w],
        [out, in_ch / groups, k[0], k[1]],
        s,
        padding,
        d,
        groups,
    )
}

#[test]
fn forward_and_backward_match_the_definition_on_random_shapes() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for case in 0..160 {
        let g = geometry(&mut rng, case % 4);
        let x = random(&mut rng, g.batch * g.in_image());
        let w = random(&mut rng, g.weight_len());
        let b = random(&mut rng, g.out_channels);
        let dy = random(&mut rng, g.batch * g.out_image());
        let bias = (case % 3 != 0).then_some(&b[..]);
        let y = reference::forward(&g, &x, &w, bias);
        assert_close("y", &forward(&g, &x, &w, bias), &y, &g);
        let want = reference::backward(&g, &x, &w, &dy, ALL);
        assert_grads(&backward(&g, &x, &w, &dy, ALL), &want, &g);
        // Into a sink that holds garbage: it must be overwritten, not added to.
        let mut sink = vec![f32::NAN; g.weight_len()];
        let got = backward_into(&g, &x, &w, &dy, ALL, Some(&mut sink));
        assert_eq!(got.weight, None);
        assert_close("dweight (sink)", &sink, want.weight.as_ref().unwrap(), &g);
        if !g.is_depthwise() {
            assert_close(
                "y (per image)",
                &forward_per_image(&g, &x, &w, bias),
                &y,
                &g,
            );
            for block in 1..=g.batch {
                for threads in [Threads::Serial, Threads::Pool] {
                    let got = forward_in_blocks(&g, &x, &w, bias, block, threads);
                    assert_close("y (blocks)", &got, &y, &g);
                    let got = backward_in_blocks(&g, &x, &w, &dy, ALL, block, threads, None);
                    assert_grads(&got, &want, &g);
                }
            }
        }
    }
}

#[test]
fn the_named_layer_shapes_match_the_definition() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let cases = [
        // SqueezeNet's stem: 3x3 stride 2, no padding, odd input.
        ConvGeometry::new(
            [2, 3, 33, 33],
            [8, 3, 3, 3],
            [2, 2],
            [[0, 0], [0, 0]],
            [1, 1],
            1,
        ),
        // MobileNetV3's depthwise 5x5 stride 2 with padding 2 and its 3x3 stride 1.
        ConvGeometry::new(
            [3, 6, 9, 9],
            [6, 1, 5, 5],
            [2, 2],
            [[2, 2], [2, 2]],
            [1, 1],
            6,
        ),
        ConvGeometry::new(
            [2, 5, 7, 7],
            [5, 1, 3, 3],
            [1, 1],
            [[1, 1], [1, 1]],
            [1, 1],
            5,
        ),
        // VGG's 3x3 padding 1 at 2x2 (most taps in the padding).
        ConvGeometry::new(
            [4, 4, 2, 2],
            [6, 4, 3, 3],
            [1, 1],
            [[1, 1], [1, 1]],
            [1, 1],
            1,
        ),
        // A fire module's 3x3 expand at 1x1 (eight of nine taps in the padding) and a
        // 2x1 image (two of three kernel columns).
        ConvGeometry::new(
            [5, 6, 1, 1],
            [7, 6, 3, 3],
            [1, 1],
            [[1, 1], [1, 1]],
            [1, 1],
            1,
        ),
        ConvGeometry::new(
            [3, 4, 2, 1],
            [6, 2, 3, 3],
            [1, 1],
            [[1, 1], [1, 1]],
            [1, 1],
            2,
        ),
        // A fire module's 1x1 squeeze.
        ConvGeometry::new(
            [3, 10, 5, 5],
            [4, 10, 1, 1],
            [1, 1],
            [[0, 0], [0, 0]],
            [1, 1],
            1,
        ),
    ];
    for g in cases {
        let x = random(&mut rng, g.batch * g.in_image());
        let w = random(&mut rng, g.weight_len());
        let b = random(&mut rng, g.out_channels);
        let dy = random(&mut rng, g.batch * g.out_image());
        assert_close(
            "y",
            &forward(&g, &x, &w, Some(&b)),
            &reference::forward(&g, &x, &w, Some(&b)),
            &g,
        );
        for needed in [
            ALL,
            Needed {
                x: false,
                weight: true,
                bias: false,
            },
            Needed {
                x: true,
                weight: false,
                bias: true,
            },
        ] {
            let want = reference::backward(&g, &x, &w, &dy, needed);
            assert_grads(&backward(&g, &x, &w, &dy, needed), &want, &g);
            if let Some(dw) = &want.weight {
                let mut sink = vec![f32::NAN; g.weight_len()];
                backward_into(&g, &x, &w, &dy, needed, Some(&mut sink));
                assert_close("dweight (sink)", &sink, dw, &g);
            }
        }
    }
}

/// Both ways of using the threads (parallel blocks for small weights, pooled products for
/// large ones) give bit-identical results on 1, 2 and 3 threads.
#[test]
fn results_do_not_depend_on_the_number_of_threads() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let small = ConvGeometry::new(
        [6, 8, 13, 11],
        [16, 8, 3, 3],
        [1, 1],
        [[1, 1], [1, 1]],
        [1, 1],
        1,
    );
    let large = ConvGeometry::new(
        [5, 512, 3, 3],
        [72, 512, 3, 3],
        [1, 1],
        [[1, 1], [1, 1]],
        [1, 1],
        1,
    );
    for g in [small, large] {
        let x = random(&mut rng, g.batch * g.in_image());
        let w = random(&mut rng, g.weight_len());
        let dy = random(&mut rng, g.batch * g.out_image());
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| (forward(&g, &x, &w, None), backward(&g, &x, &w, &dy, ALL)))
        };
        let one = run(1);
        assert_eq!(one, run(2), "{g:?}");
        assert_eq!(one, run(3), "{g:?}");
        // A sink gets the same bits, whichever way the threads are used.
        let mut sink = vec![f32::NAN; g.weight_len()];
        backward_into(&g, &x, &w, &dy, ALL, Some(&mut sink));
        assert_eq!(Some(sink), one.1.weight, "{g:?}");
    }
}
