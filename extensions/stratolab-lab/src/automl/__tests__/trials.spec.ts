import { IAutoMLJob, ITrial } from '../api';
import {
  bestFunctionName,
  countsText,
  formatValue,
  parallelData,
  sortTrials,
  trialNotebookPath,
  trialStateLabel
} from '../trials';

function trial(
  number: number,
  state: string,
  value: number | null = null,
  params: Record<string, unknown> = {}
): ITrial {
  return { number, state, value, params } as ITrial;
}

describe('sortTrials', () => {
  const trials = [
    trial(1, 'fail'),
    trial(2, 'complete', 0.5),
    trial(3, 'running'),
    trial(4, 'pruned'),
    trial(5, 'complete', 0.9),
    trial(6, 'waiting'),
    trial(7, 'complete', 0.5),
    trial(8, 'lost')
  ];

  it('puts the best completed trials first when maximizing', () => {
    expect(sortTrials(trials, 'maximize').map(t => t.number)).toEqual([5, 2, 7, 3, 6, 4, 1, 8]);
  });

  it('puts the lowest values first when minimizing', () => {
    expect(sortTrials(trials, 'minimize').map(t => t.number)).toEqual([2, 7, 5, 3, 6, 4, 1, 8]);
  });

  it('does not change the list it was given', () => {
    const copy = [...trials];
    sortTrials(trials, 'maximize');
    expect(trials).toEqual(copy);
  });
});

describe('names and labels', () => {
  it('reads Optuna states and counts', () => {
    expect(trialStateLabel('fail')).toBe('failed');
    expect(trialStateLabel('complete')).toBe('complete');
    expect(countsText({ complete: 3, pruned: 1, fail: 1, failed: 1, running: 2 })).toBe(
      '3 complete · 1 pruned · 2 failed · 2 running'
    );
    expect(countsText({ lost: 1 })).toBe('0 complete · 0 pruned · 0 failed · 0 running · 1 lost');
  });

  it('makes function names and notebook paths from the search name', () => {
    expect(bestFunctionName('My Search_1')).toBe('my-search-1');
    expect(trialNotebookPath('a/b', 3)).toBe('stratolab-automl/a-b/trial-3.ipynb');
    expect(trialNotebookPath('..', 1)).toBe('stratolab-automl/automl/trial-1.ipynb');
  });

  it('writes values short', () => {
    expect(formatValue(null)).toBe('–');
    expect(formatValue('adam')).toBe('adam');
    expect(formatValue([1, 2])).toBe('[1,2]');
  });
});

describe('parallelData', () => {
  it('has an axis per parameter and one for the objective, and one line per completed trial', () => {
    const job = {
      best: { number: 2, value: 0.9 },
      config: {
        metric: 'acc',
        direction: 'maximize',
        space: {
          lr: { type: 'float', low: 0.001, high: 0.1, log: true },
          opt: { type: 'categorical', choices: ['a', 'b'] }
        }
      }
    } as unknown as IAutoMLJob;
    const { axes, lines } = parallelData(job, [
      trial(1, 'complete', 0.5, { lr: 0.01, opt: 'a' }),
      trial(2, 'complete', 0.9, { lr: 0.05, opt: 'b' }),
      trial(3, 'running', null, { lr: 0.02, opt: 'a' })
    ]);
    expect(axes.map(a => a.kind)).toEqual(['log', 'category', 'number']);
    expect(axes[2].label).toBe('acc ↑');
    expect(lines).toHaveLength(2);
    expect(lines.map(l => l.score)).toEqual([0, 1]);
    expect(lines.map(l => l.best)).toEqual([false, true]);
  });
});
