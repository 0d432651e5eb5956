//! mnist-checkpoint (in progress).
