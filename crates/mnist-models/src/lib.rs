//! mnist-models (in progress).
