//! mnist-comm (in progress).
