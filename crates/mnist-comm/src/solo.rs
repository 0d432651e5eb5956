//! The world of one process: every collective is the identity.

use crate::{CommError, Communicator, ReduceOp};

/// A communicator for a single process (world size 1).
#[derive(Debug, Default)]
pub struct Solo;

impl Communicator for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_f32(&mut self, _: &mut [f32], _: ReduceOp) -> Result<(), CommError> {
        Ok(())
    }
    fn all_reduce_f16(&mut self, _: &mut [half::f16], _: ReduceOp) -> Result<(), CommError> {
        Ok(())
    }
    fn all_reduce_bf16(&mut self, _: &mut [half::bf16], _: ReduceOp) -> Result<(), CommError> {
        Ok(())
    }
    fn broadcast(&mut self, _: &mut [u8], _: usize) -> Result<(), CommError> {
        Ok(())
    }
    fn all_gather_bytes(&mut self, send: &[u8]) -> Result<Vec<Vec<u8>>, CommError> {
        Ok(vec![send.to_vec()])
    }
    fn barrier(&mut self) -> Result<(), CommError> {
        Ok(())
    }
    fn bytes_sent(&self) -> u64 {
        0
    }
    fn abort(&mut self, _: &str) {}
}
