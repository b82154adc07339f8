//! A safe front for the `gemm` crate's strided single-precision matrix product: the one
//! primitive every convolution kernel here reduces to.

use gemm::Parallelism;

/// A read-only view of a matrix stored anywhere in a slice, with row and column strides, so
/// a transpose or a sub-block is a view and not a copy.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A `rows x cols` matrix stored row by row with `ld` values between row starts.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize, ld: usize) -> Self {
        let view = MatRef {
            data,
            rows,
            cols,
            row_stride: ld,
            col_stride: 1,
        };
        view.check();
        view
    }

    /// The transpose, as a view of the same values.
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
            assert!(
                last < self.data.len(),
                "matrix view {}x{} (row stride {}) does not fit in {} values",
                self.rows,
                self.cols,
                self.row_stride,
                self.data.len()
            );
        }
    }
}

/// How a product may use threads: `Serial` inside work that is already split across the
/// rayon pool, `Pool` for one large product that should use every thread of the current pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    /// One thread.
    Serial,
    /// The current rayon pool.
    Pool,
}

/// `dst = a * b` (or `dst += a * b` when `accumulate`), `dst` row-major `a.rows x b.cols`
/// with `ld` values between row starts.
pub fn matmul(
    dst: &mut [f32],
    ld: usize,
    accumulate: bool,
    a: MatRef<'_>,
    b: MatRef<'_>,
    threads: Threads,
) {
    assert_eq!(a.cols, b.rows, "inner dimensions differ");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        (m - 1) * ld + n <= dst.len(),
        "destination {m}x{n} (ld {ld}) does not fit in {} values",
        dst.len()
    );
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(ld).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    let parallelism = match threads {
        Threads::Serial => Parallelism::None,
        Threads::Pool if rayon::current_num_threads() > 1 => Parallelism::Rayon(0),
        Threads::Pool => Parallelism::None,
    };
    // SAFETY: the three views were bounds-checked above (and in `MatRef::check`), `dst` is
    // borrowed mutably so it cannot alias `a` or `b`, and every stride is non-negative.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ld as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn products_and_transposed_views_match_the_definition() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        for threads in [Threads::Serial, Threads::Pool] {
            let mut c = vec![9.0; m * n];
            matmul(
                &mut c,
                n,
                false,
                MatRef::row_major(&a, m, k, k),
                MatRef::row_major(&b, k, n, n),
                threads,
            );
            for (x, y) in c.iter().zip(&want) {
                assert!((x - y).abs() < 1e-5);
            }
        }
        // (b^T a^T)^T = a b, through transposed views and accumulation onto a non-zero dst.
        let mut ct = vec![1.0; n * m];
        matmul(
            &mut ct,
            m,
            true,
            MatRef::row_major(&b, k, n, n).t(),
            MatRef::row_major(&a, m, k, k).t(),
            Threads::Serial,
        );
        for i in 0..m {
            for j in 0..n {
                assert!((ct[j * m + i] - 1.0 - want[i * n + j]).abs() < 1e-5);
            }
        }
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn views_outside_their_slice_are_refused() {
        let a = [0.0f32; 5];
        MatRef::row_major(&a, 2, 3, 3);
    }
}
