//! mnist-data (in progress).
