//! mnist-compress (in progress).
