"""metrics.jsonl and TensorBoard across a kill and a resume."""
import json
import os
import struct

from tensorboardX.proto import event_pb2

from jaxtag import reporting


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _first_run(workdir, steps):
  """A run that logs train/loss = step / 10 at `steps` and validation at 4,
  then dies without closing its writer cleanly (each write is flushed)."""
  writer = reporting.MetricWriter(workdir, resume_step=0)
  for step in steps:
    writer.write(step, {'loss': step / 10}, prefix='train/')
    if step == 4:
      writer.write(step, {'mAP': 0.4}, prefix='validation/')
  writer.close()


def _events(workdir):
  """Every event of the run's TensorBoard files, in file order."""
  logdir = os.path.join(workdir, 'tensorboard')
  events = []
  for name in sorted(os.listdir(logdir)):
    with open(os.path.join(logdir, name), 'rb') as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack('<Q', data[pos:pos + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[pos + 12:pos + 12 + length])
      events.append(event)
      pos += 12 + length + 4
  return events


def test_a_resumed_run_logs_each_step_once(tmp_path):
  workdir = str(tmp_path)
  _first_run(workdir, steps=(2, 4, 6, 8))
  with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
    f.write('{"step": 8, "train/lo')  # a line cut short by the kill
  # Checkpoint 4 was the last one saved: the resumed run logs 6 and 8 again.
  writer = reporting.MetricWriter(workdir, resume_step=4)
  assert _records(workdir) == [{'step': 2, 'train/loss': 0.2},
                               {'step': 4, 'train/loss': 0.4},
                               {'step': 4, 'validation/mAP': 0.4}]
  for step in (6, 8):
    writer.write(step, {'loss': step / 100}, prefix='train/')
  writer.close()
  assert [(r['step'], r['train/loss']) for r in _records(workdir)
          if 'train/loss' in r] == [(2, 0.2), (4, 0.4), (6, 0.06), (8, 0.08)]
  # TensorBoard hides the first run's events from step 5 on: the resumed
  # run's file starts with a restart marker at that step.
  restarts = [e.step for e in _events(workdir)
              if e.session_log.status == event_pb2.SessionLog.START]
  assert restarts == [1, 5]


def test_the_final_evaluation_run_again_replaces_the_first(tmp_path):
  workdir = str(tmp_path)
  writer = reporting.MetricWriter(workdir, resume_step=0)
  writer.write(8, {'loss': 0.8}, prefix='train/')
  writer.write(8, {'mAP': 0.5, 'loss': 1.0}, prefix='validation/')
  writer.write(8, {'mAP': 0.6}, prefix='test/')
  writer.close()
  # The run is started again at its last step: it evaluates again.
  writer = reporting.MetricWriter(workdir, resume_step=8)
  writer.write(8, {'mAP': 0.55, 'loss': 0.9}, prefix='validation/')
  writer.write(8, {'mAP': 0.65}, prefix='test/')
  writer.close()
  assert _records(workdir) == [
      {'step': 8, 'train/loss': 0.8},
      {'step': 8, 'validation/mAP': 0.55, 'validation/loss': 0.9},
      {'step': 8, 'test/mAP': 0.65}]


def test_a_fresh_start_drops_what_a_run_without_checkpoints_logged(tmp_path):
  workdir = str(tmp_path)
  _first_run(workdir, steps=(2,))
  reporting.MetricWriter(workdir, resume_step=0).close()
  assert _records(workdir) == []


def test_a_writer_without_resume_step_keeps_everything(tmp_path):
  workdir = str(tmp_path)
  _first_run(workdir, steps=(2, 4))
  writer = reporting.MetricWriter(workdir)
  writer.write(4, {'loss': 0.0}, prefix='train/')
  writer.close()
  assert [r['step'] for r in _records(workdir)] == [2, 4, 4, 4]
