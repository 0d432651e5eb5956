"""Print every scalar in a TensorBoard log folder as JSON, read with TensorBoard's own reader
(EventAccumulator, as `tensorboard --logdir` loads runs): {"tag": [[step, value], ...], ...}.
Also prints the number of event files to stderr. Used by worker/tests/observe.rs.

Usage: python tb_scalars.py LOGDIR
"""
import json
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main():
    ea = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})  # 0: keep every value
    ea.Reload()
    out = {tag: [[e.step, e.value] for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
