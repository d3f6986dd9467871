//! Matrix transposes in tiles: rows of the transpose into a caller's buffer (the model's unembedding split
//! over threads), or the whole transpose in parallel (the trainers' decoder weights).

use rayon::prelude::*;

/// Rows `first..first + out.len() / rows` of the transpose of `src`, a row-major (`rows`, `cols`) matrix,
/// written row-major into `out` (each output row is one input column). Copies in square tiles so reads and
/// writes both stay within a few cache lines; callers split the output rows across threads.
pub fn transpose_rows(src: &[f32], rows: usize, cols: usize, first: usize, out: &mut [f32]) {
    const TILE: usize = 32;
    let count = out.len() / rows.max(1);
    assert!(
        src.len() == rows * cols && first + count <= cols,
        "transpose_rows: shapes do not fit"
    );
    for c0 in (0..count).step_by(TILE) {
        let cn = TILE.min(count - c0);
        for r0 in (0..rows).step_by(TILE) {
            let rn = TILE.min(rows - r0);
            for r in r0..r0 + rn {
                let from = &src[r * cols + first + c0..r * cols + first + c0 + cn];
                for (j, &v) in from.iter().enumerate() {
                    out[(c0 + j) * rows + r] = v;
                }
            }
        }
    }
}

/// The transpose of a row-major `rows` × `cols` matrix, its rows computed in parallel by [`transpose_rows`].
pub fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const ROWS_PER_TASK: usize = 64;
    let mut out = vec![0f32; rows * cols];
    if rows == 0 {
        return out;
    }
    out.par_chunks_mut(rows * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(i, piece)| transpose_rows(src, rows, cols, i * ROWS_PER_TASK, piece));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_transposes_equal_the_definition_at_ragged_shapes() {
        for (rows, cols) in [(1, 1), (3, 70), (70, 3), (33, 129), (64, 64), (0, 5), (5, 0)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let want: Vec<f32> = (0..cols)
                .flat_map(|c| (0..rows).map(move |r| (r * cols + c) as f32))
                .collect();
            assert_eq!(transpose(&src, rows, cols), want, "{rows}x{cols}");
            if cols > 2 && rows > 0 {
                let mut part = vec![0f32; rows * 2];
                transpose_rows(&src, rows, cols, 1, &mut part);
                assert_eq!(part, want[rows..rows * 3], "{rows}x{cols} rows 1..3");
            }
        }
    }

    #[test]
    fn transpose_rows_transposes_any_shape_in_pieces() {
        for (rows, cols) in [(1, 1), (3, 70), (65, 33), (40, 1)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let mut out = vec![0f32; rows * cols];
            // Two pieces of output rows, as two threads would write them.
            let split = cols / 2;
            let (a, b) = out.split_at_mut(split * rows);
            transpose_rows(&src, rows, cols, 0, a);
            transpose_rows(&src, rows, cols, split, b);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(out[c * rows + r], src[r * cols + c], "{rows}x{cols} at ({r}, {c})");
                }
            }
        }
    }
}
