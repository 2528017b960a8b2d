/* The usage admin page: fills templates/admin.html from GET api/admin/summary for the chosen period
 * (every user and group, sortable by a click on a heading; the top consumers; GPUs held vs used and
 * the idle GPU cost) and keeps the CSV link on the same period. Plain script, no build step: the
 * usage service serves it as it is. Figures are written as the lab's Usage section writes them
 * (two decimals; two significant digits below a cent). */
(function () {
  'use strict';

  var DAY_MS = 86400000;

  // --- pure helpers --------------------------------------------------------------------------------

  function finite(v) {
    return typeof v === 'number' && isFinite(v) ? v : 0;
  }

  function formatCost(v, currency) {
    v = finite(v);
    var text = v !== 0 && Math.abs(v) < 0.01 ? v.toPrecision(2) : v.toFixed(2);
    return currency ? text + ' ' + currency : text;
  }

  function formatAmount(v) {
    return finite(v).toFixed(2);
  }

  function formatPercent(part, whole) {
    if (!(finite(whole) > 0) || part === null || part === undefined) {
      return '–';
    }
    return Math.round((finite(part) / whole) * 100) + '%';
  }

  /** YYYY-MM-DD of a Date, in UTC. */
  function isoDay(d) {
    return d.toISOString().slice(0, 10);
  }

  /** The first and last day (both shown, inclusive) of a preset period. */
  function presetPeriod(preset, now) {
    var y = now.getUTCFullYear();
    var m = now.getUTCMonth();
    var today = new Date(Date.UTC(y, m, now.getUTCDate()));
    if (preset === 'last-month') {
      return { from: isoDay(new Date(Date.UTC(y, m - 1, 1))), to: isoDay(new Date(Date.UTC(y, m, 0))) };
    }
    if (preset === '30d') {
      return { from: isoDay(new Date(today.getTime() - 29 * DAY_MS)), to: isoDay(today) };
    }
    return { from: isoDay(new Date(Date.UTC(y, m, 1))), to: isoDay(today) };
  }

  /** The API's [from, to) for days shown inclusive: `to` is the midnight after the last day. */
  function apiPeriod(p) {
    var end = Date.parse(p.to + 'T00:00:00Z');
    return { from: p.from, to: isNaN(end) ? p.to : isoDay(new Date(end + DAY_MS)) };
  }

  /** A copy of rows sorted by key: numbers as numbers, text by the locale, missing values last. */
  function sortRows(rows, key, order) {
    var sign = order === 'asc' ? 1 : -1;
    function missing(v) {
      return v === null || v === undefined || (typeof v === 'number' && isNaN(v));
    }
    return rows
      .map(function (row, index) { return { row: row, index: index }; })
      .sort(function (a, b) {
        var x = a.row[key];
        var y = b.row[key];
        if (missing(x) || missing(y)) {
          return missing(x) === missing(y) ? a.index - b.index : missing(x) ? 1 : -1;
        }
        if (Array.isArray(x)) { x = x.join(', '); }
        if (Array.isArray(y)) { y = y.join(', '); }
        var c = typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y));
        return c * sign || a.index - b.index;
      })
      .map(function (e) { return e.row; });
  }

  // --- the page ------------------------------------------------------------------------------------

  var $ = function (id) { return document.getElementById(id); };
  var state = { data: null, sort: { users: ['cost', 'desc'], groups: ['cost', 'desc'] } };

  function xsrfToken() {
    var meta = document.querySelector('meta[name=stratolab-xsrf]');
    var value = meta ? meta.getAttribute('content') || '' : '';
    if (value && value.indexOf('{{') < 0) {
      return value;
    }
    var match = document.cookie.match(/(?:^|;\s*)_xsrf=([^;]*)/);
    return match ? decodeURIComponent(match[1]) : '';
  }

  /** The columns of a table: heading, row key, how a cell is written. */
  function columns(kind, currency) {
    var first = kind === 'users'
      ? [['User', 'user', String], ['Groups', 'groups', function (g) { return (g || []).join(', '); }]]
      : [['Group', 'group', String], ['Members', 'members', function (n) { return String(finite(n)); }]];
    return first.concat([
      ['Cost', 'cost', function (v) { return formatCost(v, currency); }],
      ['CPU core-h', 'cpu_core_hours', formatAmount],
      ['CPU-h used', 'cpu_hours_used', function (v) { return v === null || v === undefined ? '–' : formatAmount(v); }],
      ['Memory GB-h', 'memory_gb_hours', formatAmount],
      ['GPU-h held', 'gpu_hours', formatAmount],
      ['GPU-h used', 'gpu_hours_used', function (v) { return v === null || v === undefined ? '–' : formatAmount(v); }],
      ['Idle GPU cost', 'idle_gpu_cost', function (v) { return formatCost(v, currency); }],
      ['Requests', 'requests', function (v) { return String(Math.round(finite(v))); }]
    ]);
  }

  function cell(tag, text, attrs) {
    var node = document.createElement(tag);
    node.textContent = text;
    for (var name in attrs || {}) {
      node.setAttribute(name, attrs[name]);
    }
    return node;
  }

  function renderTable(kind) {
    var data = state.data;
    var rows = data[kind] || [];
    var currency = data.currency || '';
    var table = $(kind);
    var cols = columns(kind, currency);
    var sort = state.sort[kind];
    var head = document.createElement('tr');
    cols.forEach(function (col) {
      var label = col[0] + (col[1] === sort[0] ? (sort[1] === 'asc' ? ' ▲' : ' ▼') : '');
      var th = cell('th', label, { 'data-testid': 'usage-admin-' + kind + '-sort-' + col[1], 'data-col': col[1] });
      if (col[1] === sort[0]) {
        th.setAttribute('aria-sort', sort[1] === 'asc' ? 'ascending' : 'descending');
      }
      th.addEventListener('click', function () {
        var order = col[1] === sort[0] && sort[1] === 'desc' ? 'asc' : 'desc';
        state.sort[kind] = [col[1], order];
        renderTable(kind);
      });
      head.appendChild(th);
    });
    var thead = document.createElement('thead');
    thead.appendChild(head);
    var tbody = document.createElement('tbody');
    var name = kind === 'users' ? 'user' : 'group';
    sortRows(rows, sort[0], sort[1]).forEach(function (row) {
      var tr = cell('tr', '', { 'data-testid': 'usage-admin-' + name + '-' + row[name], 'data-name': row[name] });
      cols.forEach(function (col) {
        tr.appendChild(cell('td', col[2](row[col[1]]), { 'data-col': col[1] }));
      });
      tbody.appendChild(tr);
    });
    if (!rows.length) {
      var empty = cell('tr', '');
      empty.appendChild(cell('td', 'No usage in this period.', { colspan: String(cols.length), 'class': 'note' }));
      tbody.appendChild(empty);
    }
    table.replaceChildren(thead, tbody);
    $(kind + '-section').hidden = false;
  }

  function sum(rows, key) {
    return rows.reduce(function (total, row) { return total + finite(row[key]); }, 0);
  }

  function renderOverview() {
    var data = state.data;
    var users = data.users || [];
    var currency = data.currency || '';
    var totals = data.totals || {};
    var cost = 'cost' in totals ? totals.cost : sum(users, 'cost');
    var held = 'gpu_hours' in totals ? totals.gpu_hours : sum(users, 'gpu_hours');
    var measured = users.some(function (u) { return u.gpu_hours_used !== null && u.gpu_hours_used !== undefined; });
    var used = 'gpu_hours_used' in totals ? totals.gpu_hours_used : measured ? sum(users, 'gpu_hours_used') : null;
    var idle = 'idle_gpu_cost' in totals ? totals.idle_gpu_cost : sum(users, 'idle_gpu_cost');
    var set = function (id, text) { document.querySelector('[data-testid=' + id + ']').textContent = text; };
    set('usage-admin-total-cost', formatCost(cost, currency));
    set('usage-admin-gpu-held', formatAmount(held));
    set('usage-admin-gpu-used', used === null ? '–' : formatAmount(used));
    set('usage-admin-gpu-utilisation', formatPercent(used, held));
    set('usage-admin-idle-cost', formatCost(idle, currency));
    $('overview').hidden = false;

    var top = $('top');
    top.replaceChildren();
    (data.top || []).forEach(function (entry, i) {
      var who = entry.user || entry.group || entry.key || '?';
      var li = cell('li', '', { 'data-testid': 'usage-admin-top-' + i, 'data-name': who });
      li.appendChild(cell('span', who, { 'class': 'who' }));
      li.appendChild(cell('span', formatCost(entry.cost, currency), { 'class': 'cost' }));
      top.appendChild(li);
    });
    $('top-section').hidden = !(data.top || []).length;
  }

  /** The service's API prefix (`/services/usage/api/`), as the page was rendered with it. */
  function api(path) {
    return (document.body.dataset.api || 'api/') + path;
  }

  function period() {
    var form = $('period');
    return { from: form.elements.from.value, to: form.elements.to.value };
  }

  function query(p) {
    return 'from=' + encodeURIComponent(p.from) + '&to=' + encodeURIComponent(p.to);
  }

  /** The API's query for the days shown (inclusive). */
  function apiQuery(p) {
    return query(apiPeriod(p));
  }

  function showError(message) {
    var node = $('error');
    node.textContent = message;
    node.hidden = !message;
  }

  async function load() {
    var p = period();
    $('csv').setAttribute('href', api('admin/summary.csv?' + apiQuery(p)));
    $('loading').hidden = false;
    showError('');
    try {
      var response = await fetch(api('admin/summary?' + apiQuery(p)), {
        credentials: 'same-origin',
        headers: { Accept: 'application/json', 'X-XSRFToken': xsrfToken() }
      });
      var text = await response.text();
      var body = null;
      try { body = JSON.parse(text); } catch (e) { body = null; }
      if (!response.ok) {
        var detail = body && (body.error || body.message);
        throw new Error(detail || 'The usage service answered ' + response.status + ' ' + response.statusText);
      }
      state.data = body;
      renderOverview();
      renderTable('users');
      renderTable('groups');
      document.body.dataset.loaded = apiQuery(p);
    } catch (error) {
      showError(error.message || String(error));
    } finally {
      $('loading').hidden = true;
    }
  }

  function setPeriod(p) {
    var form = $('period');
    form.elements.from.value = p.from;
    form.elements.to.value = p.to;
  }

  function start() {
    var params = new URLSearchParams(location.search);
    var initial = presetPeriod('month', new Date());
    setPeriod({ from: params.get('from') || initial.from, to: params.get('to') || initial.to });
    $('period').addEventListener('submit', function (event) {
      event.preventDefault();
      history.replaceState(null, '', '?' + query(period()));
      void load();
    });
    document.querySelectorAll('[data-preset]').forEach(function (button) {
      button.addEventListener('click', function () {
        setPeriod(presetPeriod(button.getAttribute('data-preset'), new Date()));
        history.replaceState(null, '', '?' + query(period()));
        void load();
      });
    });
    void load();
  }

  // for tests in a browser: the pure helpers
  window.StratolabUsageAdmin = { formatCost: formatCost, formatAmount: formatAmount, sortRows: sortRows, presetPeriod: presetPeriod, apiPeriod: apiPeriod };

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', start);
  } else {
    start();
  }
})();
