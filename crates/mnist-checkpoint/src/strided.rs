//! Copies a strided tensor view out of raw storage bytes into a row-major `f32` vector,
//! checking that every element it touches lies inside the storage.

use crate::pickle_read::TensorRef;

/// Gathers the values of `t` from `storage` (the raw bytes of `t.storage`).
/// Errors quote the shape, stride, offset and storage size when they do not fit.
pub(crate) fn gather(t: &TensorRef, storage: &[u8], big_endian: bool) -> Result<Vec<f32>, String> {
    let dtype = t.storage.dtype;
    let esize = dtype.size();
    let expected_bytes = t.storage.numel.checked_mul(esize);
    if expected_bytes != Some(storage.len()) {
        return Err(format!(
            "storage '{}' declares {} {} elements but its record holds {} bytes",
            t.storage.key,
            t.storage.numel,
            dtype,
            storage.len()
        ));
    }
    let describe = || {
        format!(
            "size {:?}, stride {:?}, offset {} do not fit in storage '{}' of {} elements",
            t.shape, t.stride, t.offset, t.storage.key, t.storage.numel
        )
    };
    let numel = t
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(describe)?;
    if numel == 0 {
        return Ok(Vec::new());
    }
    // Largest storage index the view touches.
    let mut last = t.offset;
    for (&d, &s) in t.shape.iter().zip(&t.stride) {
        last = (d - 1)
            .checked_mul(s)
            .and_then(|x| x.checked_add(last))
            .ok_or_else(describe)?;
    }
    if last >= t.storage.numel {
        return Err(describe());
    }
    let mut out = Vec::with_capacity(numel);
    if is_contiguous(&t.shape, &t.stride) {
        for i in t.offset..t.offset + numel {
            out.push(dtype.read_f32(storage, i, big_endian));
        }
        return Ok(out);
    }
    // Odometer over the multi-index; `pos` tracks the storage index incrementally.
    let nd = t.shape.len();
    let mut index = vec![0usize; nd];
    let mut pos = t.offset;
    for _ in 0..numel {
        out.push(dtype.read_f32(storage, pos, big_endian));
        for k in (0..nd).rev() {
            index[k] += 1;
            // Wrapping: a size-1 dim may carry any stride; the net change is in range.
            pos = pos.wrapping_add(t.stride[k]);
            if index[k] < t.shape[k] {
                break;
            }
            pos = pos.wrapping_sub(t.stride[k].wrapping_mul(t.shape[k]));
            index[k] = 0;
        }
    }
    Ok(out)
}

/// Whether `stride` is the row-major stride of `shape` (size-1 dims may have any stride).
fn is_contiguous(shape: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1usize;
    for (&d, &s) in shape.iter().zip(stride).rev() {
        if d != 1 && s != expected {
            return false;
        }
        expected = expected.saturating_mul(d);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pickle_read::StorageRef;
    use crate::DType;

    fn view(numel: usize, offset: usize, shape: &[usize], stride: &[usize]) -> TensorRef {
        TensorRef {
            storage: StorageRef {
                key: "0".into(),
                dtype: DType::F32,
                numel,
            },
            offset,
            shape: shape.to_vec(),
            stride: stride.to_vec(),
        }
    }

    fn bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn transposed_view_is_reordered() {
        // Storage holds a 2x3 row-major matrix; the view is its 3x2 transpose.
        let s = bytes(&[0., 1., 2., 3., 4., 5.]);
        let got = gather(&view(6, 0, &[3, 2], &[1, 3]), &s, false).unwrap();
        assert_eq!(got, vec![0., 3., 1., 4., 2., 5.]);
    }

    #[test]
    fn offset_slice_and_broadcast_stride() {
        let s = bytes(&[0., 1., 2., 3., 4., 5.]);
        assert_eq!(
            gather(&view(6, 2, &[2, 2], &[2, 1]), &s, false).unwrap(),
            vec![2., 3., 4., 5.]
        );
        // Stride 0 (expand): the same element repeated.
        assert_eq!(
            gather(&view(6, 4, &[3], &[0]), &s, false).unwrap(),
            vec![4., 4., 4.]
        );
    }

    #[test]
    fn out_of_range_views_are_errors() {
        let s = bytes(&[0.; 6]);
        let e = gather(&view(6, 1, &[2, 3], &[3, 1]), &s, false).unwrap_err();
        assert!(e.contains("do not fit"), "{e}");
        let e = gather(&view(7, 0, &[2, 3], &[3, 1]), &s, false).unwrap_err();
        assert!(e.contains("holds 24 bytes"), "{e}");
        let e = gather(&view(6, 0, &[usize::MAX, 2], &[1, 1]), &s, false).unwrap_err();
        assert!(e.contains("do not fit"), "{e}");
    }
}
