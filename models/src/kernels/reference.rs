//! Convolution by its definition, one multiply-add per tap in seven nested loops: slow and
//! obviously right, the yardstick for the fast kernels.

use super::im2col::ConvGeometry;
use super::{LayerGrads, Needed};

/// Calls `f(x_index, weight_index, y_index)` for every tap that reads the input.
fn each_tap(g: &ConvGeometry, mut f: impl FnMut(usize, usize, usize)) {
    let (cg, mg) = (g.in_channels / g.groups, g.group_out());
    let [h, w] = g.in_size;
    let [kh, kw] = g.kernel;
    let [oh_n, ow_n] = g.out_size;
    for n in 0..g.batch {
        for m in 0..g.out_channels {
            let grp = m / mg;
            for ci in 0..cg {
                let c = grp * cg + ci;
                for ki in 0..kh {
                    for kj in 0..kw {
                        for oh in 0..oh_n {
                            for ow in 0..ow_n {
                                let ih = (oh * g.stride[0] + ki * g.dilation[0]) as isize
                                    - g.padding[0] as isize;
                                let iw = (ow * g.stride[1] + kj * g.dilation[1]) as isize
                                    - g.padding[1] as isize;
                                if ih < 0 || iw < 0 || ih >= h as isize || iw >= w as isize {
                                    continue;
                                }
                                let xi =
                                    ((n * g.in_channels + c) * h + ih as usize) * w + iw as usize;
                                let wi = ((m * cg + ci) * kh + ki) * kw + kj;
                                let yi = ((n * g.out_channels + m) * oh_n + oh) * ow_n + ow;
                                f(xi, wi, yi);
                            }
                        }
                    }
                }
            }
        }
    }
}

pub fn forward(g: &ConvGeometry, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let p = g.out_pixels();
    let mut y: Vec<f32> = (0..g.batch * g.out_image())
        .map(|i| bias.map_or(0.0, |b| b[(i / p) % g.out_channels]))
        .collect();
    each_tap(g, |xi, wi, yi| y[yi] += x[xi] * weight[wi]);
    y
}

pub fn backward(
    g: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    needed: Needed,
) -> LayerGrads {
    let p = g.out_pixels();
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0; weight.len()];
    each_tap(g, |xi, wi, yi| {
        dx[xi] += weight[wi] * dy[yi];
        dw[wi] += x[xi] * dy[yi];
    });
    let mut db = vec![0.0; g.out_channels];
    for (i, v) in dy.iter().enumerate() {
        db[(i / p) % g.out_channels] += v;
    }
    LayerGrads {
        x: needed.x.then_some(dx),
        weight: needed.weight.then_some(dw),
        bias: needed.bias.then_some(db),
    }
}
