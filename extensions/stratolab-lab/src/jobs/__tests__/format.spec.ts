import { IRun } from '../api';
import { runSource } from '../format';

function run(fields: Partial<IRun>): IRun {
  return {
    id: 1,
    schedule_id: null,
    schedule_name: 'train',
    owner: 'alice',
    trigger: 'manual',
    state: 'succeeded',
    attempt: 1,
    scheduled_for: null,
    created_at: '2024-01-01T00:00:00+00:00',
    started_at: null,
    finished_at: null,
    duration: null,
    lateness: null,
    error: null,
    parameters: {},
    ...fields
  };
}

describe('runSource', () => {
  it("names a schedule's run by its schedule", () => {
    expect(runSource(run({ schedule_id: 3, schedule_name: 'nightly', trigger: 'schedule' }))).toBe('nightly');
  });

  it("names a pipeline's step by step and pipeline", () => {
    const labels = { pipeline_run: '12', pipeline: 'digits', step: 'Train' };
    expect(runSource(run({ trigger: 'pipeline', labels }))).toBe('Train · pipeline digits');
    expect(runSource(run({ trigger: 'pipeline', labels: { pipeline_run: '12' } }))).toBe('train · pipeline 12');
  });

  it('marks a notebook run once', () => {
    expect(runSource(run({}))).toBe('train (run once)');
  });
});
