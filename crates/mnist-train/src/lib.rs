//! mnist-train (in progress).
