//! Rendezvous file format (filled in by the multi-process work).
