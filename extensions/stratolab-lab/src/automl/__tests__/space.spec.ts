import { formatChoices, parseChoices, readBudget, readSpaceItem, startingItem, uniqueName } from '../space';

describe('choices', () => {
  it('reads JSON values, else text', () => {
    expect(parseChoices('mlp, \'logreg\', 3, true, null, "a b",, ')).toEqual(['mlp', 'logreg', 3, true, null, 'a b']);
    expect(parseChoices('')).toEqual([]);
  });

  it('writes choices back so that they read the same', () => {
    for (const choices of [
      ['mlp', 3, true],
      ['3', 'a b', 'null', "'x'"],
      [null, { a: 1 }]
    ]) {
      expect(parseChoices(formatChoices(choices))).toEqual(choices);
    }
    expect(formatChoices(['mlp', '3'])).toBe('mlp, "3"');
  });
});

describe('startingItem', () => {
  it('keeps the proposed range', () => {
    const proposed = { type: 'int' as const, low: 1, high: 5 };
    const item = startingItem({ name: 'n', type: 'int', default: 3 } as never, proposed);
    expect(item).toEqual(proposed);
    expect(item).not.toBe(proposed);
  });

  it('searches around the default', () => {
    expect(startingItem({ name: 'lr', type: 'float', default: 0.01 } as never)).toEqual({
      type: 'float',
      low: 0.001,
      high: 0.1,
      log: true
    });
    expect(startingItem({ name: 'n', type: 'int', default: 32 } as never)).toEqual({
      type: 'int',
      low: 16,
      high: 64,
      log: true
    });
    expect(startingItem({ name: 'b', type: 'bool', default: true } as never)).toEqual({
      type: 'categorical',
      choices: [true, false]
    });
    expect(startingItem({ name: 's', type: 'str', default: 'adam' } as never)).toEqual({
      type: 'categorical',
      choices: ['adam']
    });
  });
});

describe('uniqueName', () => {
  it('adds the first free number', () => {
    expect(uniqueName('train', [])).toBe('train');
    expect(uniqueName('train', ['train', 'train-2'])).toBe('train-3');
  });
});

describe('readSpaceItem', () => {
  const fields = {
    type: 'float' as const,
    low: '0.001',
    high: '0.1',
    step: '',
    log: true,
    choices: '',
    parent: '',
    when: ''
  };

  it('reads a range', () => {
    expect(readSpaceItem('lr', fields)).toEqual({
      item: { type: 'float', low: 0.001, high: 0.1, log: true },
      problems: []
    });
  });

  it('names the field of each problem', () => {
    const { item, problems } = readSpaceItem('n', { ...fields, type: 'int', low: '', high: '2.5', step: '-1' });
    expect(item).toBeNull();
    expect(problems).toEqual([
      ['space.n.low', 'Enter the lowest value to try.'],
      ['space.n.high', 'high of an int must be a whole number.'],
      ['space.n.step', 'The step must be a positive number.']
    ]);
  });

  it('reads choices and a condition', () => {
    expect(
      readSpaceItem('depth', { ...fields, type: 'categorical', choices: '2, 4', parent: 'model', when: 'tree' })
    ).toEqual({ item: { type: 'categorical', choices: [2, 4], when: { model: ['tree'] } }, problems: [] });
    expect(readSpaceItem('depth', { ...fields, type: 'categorical', parent: 'model' }).problems).toEqual([
      ['space.depth.choices', 'Give at least one choice.'],
      ['space.depth.when', 'Give the value(s) of model under which depth applies.']
    ]);
  });
});

describe('readBudget', () => {
  const budget = { trials: '20', parallel: '2', timeout: '', max_failed: '', trial_timeout: '', seed: '' };

  it('reads whole numbers and leaves out empty optional ones', () => {
    expect(readBudget({ ...budget, seed: '0' })).toEqual({
      numbers: {
        trials: 20,
        parallel: 2,
        timeout: undefined,
        max_failed: undefined,
        trial_timeout: undefined,
        seed: 0
      },
      problems: []
    });
  });

  it('refuses missing, fractional and too small numbers', () => {
    expect(readBudget({ ...budget, trials: '', parallel: '1.5', timeout: '0' }).problems).toEqual([
      ['trials', 'Enter a number.'],
      ['parallel', 'Expected a whole number of at least 1.'],
      ['timeout', 'Expected a whole number of at least 1.']
    ]);
  });
});
