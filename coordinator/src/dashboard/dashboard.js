// ringtrain dashboard: live view of one run, fed by the coordinator's /events (server-sent
// events: `status`, one JSON status at least every second; `history`, /history's completed
// epochs and steps, on connect and after each epoch; `end`). No libraries, no external URLs;
// charts are drawn on <canvas> here.
//
// Hooks for tests (tests/browser/dashboard.cjs): body[data-conn] (connecting, live,
// reconnecting, ended), body[data-status], #progress[data-step][data-total],
// canvas[data-points], #workers tr[data-worker-id], #epochs tr[data-epoch].
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const DASH = '—';
  const COLORS = {
    train: '#2563eb', raw: '#93c5fd', valid: '#ea580c', accuracy: '#16a34a',
    lr: '#7c3aed', beta1: '#0891b2',
  };

  const state = {
    status: null,
    history: null,
    samples: [], // [ms, step] of recent updates, for the ETA before the first epoch
    ended: false,
  };

  // --- formatting ---------------------------------------------------------------------------
  const num = (x) => typeof x === 'number' && Number.isFinite(x);
  const fixed = (x, d) => (num(x) ? x.toFixed(d) : DASH);
  const int = (x) => (num(x) ? Math.round(x).toLocaleString('en-US') : DASH);
  function mmss(s) {
    if (!num(s)) return DASH;
    s = Math.max(0, Math.round(s));
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const ss = String(s % 60).padStart(2, '0');
    return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${String(m).padStart(2, '0')}:${ss}`;
  }
  function age(s) {
    if (!num(s)) return DASH;
    return s < 60 ? `${s.toFixed(1)} s ago` : `${mmss(s)} ago`;
  }
  function seconds(s) {
    if (!num(s)) return DASH;
    return s < 1 ? `${(s * 1000).toFixed(1)} ms` : `${s.toFixed(2)} s`;
  }
  function sci(x) {
    if (!num(x)) return DASH;
    if (x === 0) return '0';
    const a = Math.abs(x);
    return a >= 0.01 && a < 1000 ? String(+x.toPrecision(3)) : x.toExponential(1);
  }
  function text(id, value) {
    const el = $(id);
    if (el.textContent !== value) el.textContent = value;
  }
  function cell(tr, value, cls) {
    const td = document.createElement('td');
    td.textContent = value;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  // --- live status --------------------------------------------------------------------------
  function setConn(kind, label) {
    document.body.dataset.conn = kind;
    text('conn', label);
  }

  function banner(kind, message) {
    const b = $('banner');
    if (!kind) {
      b.hidden = true;
      return;
    }
    b.dataset.kind = kind;
    b.textContent = message;
    b.hidden = false;
  }

  function eta(s) {
    if (s.status === 'finished') return 'done';
    if (s.status !== 'running' || !(s.total_steps > 0)) return DASH;
    const left = s.total_steps - s.step;
    // Whole epochs (validation included) are the best guide once there are some.
    const h = state.history;
    if (h && h.epochs.length > 0) {
      const last = h.epochs[h.epochs.length - 1];
      const secs = h.epochs.reduce((a, e) => a + (num(e.seconds) ? e.seconds : 0), 0);
      if (last.end_step > 0 && secs > 0) return mmss((left * secs) / last.end_step);
    }
    const w = state.samples;
    if (w.length >= 2) {
      const [t0, s0] = w[0];
      const [t1, s1] = w[w.length - 1];
      if (s1 > s0 && t1 > t0) return mmss((left * (t1 - t0)) / 1000 / (s1 - s0));
    }
    return DASH;
  }

  function renderStatus(s) {
    document.body.dataset.status = s.status;
    text('run-id', s.run_id || DASH);
    const pill = $('status');
    pill.dataset.status = s.status;
    text('status', s.status);
    document.title = `ringtrain · ${s.run_id} · ${s.status}`;
    text('round', String(s.round));
    text('world-size', String(s.world_size));
    text('epoch', `${s.epochs_completed} / ${s.epochs}`);
    text('accuracy', num(s.accuracy) ? `${(s.accuracy * 100).toFixed(2)} %` : DASH);
    text('images', int(s.train_images_per_s));
    text('restarts', String(s.restarts));

    const total = s.total_steps || 0;
    const step = Math.min(s.step || 0, total || Infinity);
    const frac = total > 0 ? step / total : 0;
    text('step', int(step));
    text('total-steps', total > 0 ? int(total) : DASH);
    text('percent', total > 0 ? `${(frac * 100).toFixed(1)} %` : '');
    const bar = $('progress');
    bar.dataset.step = String(step);
    bar.dataset.total = String(total);
    $('bar-fill').style.width = `${(frac * 100).toFixed(2)}%`;
    text('eta', eta(s));

    renderWorkers(s);

    if (s.status === 'failed') banner('failed', `Run failed: ${s.reason || 'no reason given'}`);
    else if (s.status === 'finished') {
      const acc = num(s.accuracy) ? ` — validation accuracy ${(s.accuracy * 100).toFixed(2)} %` : '';
      banner('finished', `Run finished${acc}.`);
    } else if (!state.ended && document.body.dataset.conn !== 'reconnecting') banner(null);
  }

  function renderWorkers(s) {
    const body = $('workers').tBodies[0];
    const rows = (s.ranks || []).slice().sort((a, b) => a.rank - b.rank);
    body.replaceChildren();
    if (rows.length === 0) {
      const tr = document.createElement('tr');
      tr.className = 'empty';
      const td = cell(tr, s.status === 'rendezvous' ? 'waiting for workers to join…' : 'no workers');
      td.colSpan = 12;
      body.appendChild(tr);
      return;
    }
    for (const r of rows) {
      const tr = document.createElement('tr');
      tr.dataset.workerId = r.worker_id;
      tr.dataset.rank = String(r.rank);
      cell(tr, String(r.rank), 'num');
      cell(tr, r.worker_id, 'mono');
      cell(tr, r.host ? r.host : DASH, 'mono');
      cell(tr, r.device || DASH, 'mono');
      cell(tr, int(r.step), 'num');
      cell(tr, int(r.images_per_s), 'num');
      cell(tr, seconds(r.allreduce_s), 'num');
      cell(tr, seconds(r.compute_s_per_step), 'num');
      cell(tr, seconds(r.wait_s_per_step), 'num');
      // The slowdown against the other ranks' median compute; a straggler's row is marked.
      const slow = cell(tr, num(r.slowdown) ? `${r.slowdown.toFixed(2)}×` : DASH, 'num slowdown');
      if (r.straggler) {
        tr.classList.add('straggler');
        slow.title = 'straggler: its compute per step exceeds the median of the other ranks by more than --straggler-margin';
      }
      const hb = cell(tr, age(r.heartbeat_age_s), 'num');
      // The default watchdog: 3 missed heartbeats of 5 s.
      if (num(r.heartbeat_age_s) && r.heartbeat_age_s > 15 && !['finished', 'failed'].includes(s.status)) {
        hb.classList.add('stale');
      }
      cell(tr, num(r.restarts) ? String(r.restarts) : DASH, 'num');
      body.appendChild(tr);
    }
  }

  function onStatus(s) {
    const prev = state.status;
    state.status = s;
    const now = performance.now();
    state.samples.push([now, s.step || 0]);
    while (state.samples.length > 2 && now - state.samples[0][0] > 60000) state.samples.shift();
    renderStatus(s);
    // The charts' x axes span the whole run.
    if (!prev || prev.total_steps !== s.total_steps || prev.epochs !== s.epochs) drawCharts();
  }

  function onHistory(h) {
    state.history = h;
    renderEpochs();
    drawCharts();
    if (state.status) text('eta', eta(state.status));
  }

  function renderEpochs() {
    const body = $('epochs').tBodies[0];
    const rows = state.history ? state.history.epochs : [];
    body.replaceChildren();
    if (rows.length === 0) {
      const tr = document.createElement('tr');
      tr.className = 'empty';
      cell(tr, 'no epoch completed yet').colSpan = 6;
      body.appendChild(tr);
      return;
    }
    for (const e of rows) {
      const tr = document.createElement('tr');
      tr.dataset.epoch = String(e.epoch);
      cell(tr, String(e.epoch), 'num');
      cell(tr, fixed(e.train_loss, 6), 'num');
      cell(tr, fixed(e.valid_loss, 6), 'num');
      cell(tr, fixed(e.accuracy, 6), 'num');
      cell(tr, int(e.train_images_per_s), 'num');
      cell(tr, mmss(e.seconds), 'num');
      body.appendChild(tr);
    }
  }

  // --- charts -------------------------------------------------------------------------------
  function niceTicks(lo, hi, n) {
    if (!(hi > lo)) {
      const pad = Math.abs(lo) * 0.1 || 1;
      lo -= pad;
      hi += pad;
    }
    const raw = (hi - lo) / Math.max(1, n);
    const mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    const start = Math.floor(lo / step) * step;
    const end = Math.ceil(hi / step) * step;
    const ticks = [];
    for (let v = start; v <= end + step * 1e-9; v += step) ticks.push(+v.toPrecision(12));
    return { lo: start, hi: end, ticks, step };
  }

  function tickLabel(v, step) {
    if (v === 0) return '0';
    const a = Math.abs(step);
    if (a >= 1) return Math.round(v).toLocaleString('en-US');
    if (Math.abs(v) < 1e-3 || a < 1e-4) return v.toExponential(1);
    const d = Math.max(0, -Math.floor(Math.log10(a) + 1e-9));
    const mantissa = a * 10 ** d;
    return v.toFixed(Math.min(6, d + (Math.abs(mantissa - Math.round(mantissa)) > 1e-9 ? 1 : 0)));
  }

  // series: [{name, color, points: [[x, y], ...], markers, width, alpha}]
  function drawChart(canvas, series, opts) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth;
    const h = canvas.clientHeight;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const pts = series.flatMap((s) => s.points).filter((p) => num(p[0]) && num(p[1]));
    canvas.dataset.points = String(pts.length);
    ctx.font = '11px system-ui, sans-serif';
    if (pts.length === 0) {
      ctx.fillStyle = '#9ca3af';
      ctx.textAlign = 'center';
      ctx.fillText(opts.empty || 'waiting for the first epoch…', w / 2, h / 2);
      return;
    }
    const xs = pts.map((p) => p[0]);
    const ys = pts.map((p) => p[1]);
    // x: exactly the domain (the whole run when known, so curves grow left to right), ticks
    // inside it; y: rounded out to nice ticks, capped where values cannot go (accuracy ≤ 100 %).
    const x0 = Math.min(opts.xMin ?? Infinity, ...xs);
    const x1 = Math.max(opts.xMax ?? -Infinity, ...xs);
    const xt = niceTicks(x0, x1, 6);
    if (x1 > x0) {
      xt.lo = x0;
      xt.hi = x1;
      xt.ticks = xt.ticks.filter((v) => v >= x0 - 1e-9 && v <= x1 + 1e-9);
    }
    const yt = niceTicks(Math.min(...ys), Math.max(...ys), 4);
    if (opts.yCap !== undefined && yt.hi > opts.yCap) {
      yt.hi = Math.max(opts.yCap, Math.max(...ys));
      yt.ticks = yt.ticks.filter((v) => v <= yt.hi + 1e-9);
      if (yt.lo >= yt.hi) yt.lo = yt.hi - yt.step;
    }
    const yLabels = yt.ticks.map((v) => (opts.yFormat ? opts.yFormat(v) : tickLabel(v, yt.step)));
    const xLabels = xt.ticks.map((v) => tickLabel(v, xt.step));
    const left = 12 + Math.max(...yLabels.map((l) => ctx.measureText(l).width));
    const right = 6 + (xLabels.length ? ctx.measureText(xLabels[xLabels.length - 1]).width / 2 : 0);
    const pad = { l: left, r: Math.max(12, right), t: 8, b: 30 };
    const X = (x) => pad.l + ((x - xt.lo) / (xt.hi - xt.lo || 1)) * (w - pad.l - pad.r);
    const Y = (y) => h - pad.b - ((y - yt.lo) / (yt.hi - yt.lo || 1)) * (h - pad.t - pad.b);

    ctx.strokeStyle = '#eef0f3';
    ctx.lineWidth = 1;
    ctx.fillStyle = '#6b7280';
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    yt.ticks.forEach((v, i) => {
      const y = Math.round(Y(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(pad.l, y);
      ctx.lineTo(w - pad.r, y);
      ctx.stroke();
      ctx.fillText(yLabels[i], pad.l - 6, y);
    });
    ctx.textAlign = 'center';
    ctx.textBaseline = 'top';
    xt.ticks.forEach((v, i) => {
      const x = Math.round(X(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(x, pad.t);
      ctx.lineTo(x, h - pad.b);
      ctx.stroke();
      ctx.fillText(xLabels[i], x, h - pad.b + 5);
    });
    ctx.fillText(opts.xLabel, pad.l + (w - pad.l - pad.r) / 2, h - 13);

    for (const s of series) {
      const p = s.points.filter((q) => num(q[0]) && num(q[1]));
      if (p.length === 0) continue;
      ctx.globalAlpha = s.alpha ?? 1;
      ctx.strokeStyle = s.color;
      ctx.fillStyle = s.color;
      ctx.lineWidth = s.width ?? 2;
      ctx.lineJoin = 'round';
      ctx.beginPath();
      p.forEach(([x, y], i) => (i === 0 ? ctx.moveTo(X(x), Y(y)) : ctx.lineTo(X(x), Y(y))));
      ctx.stroke();
      if (s.markers || p.length === 1) {
        for (const [x, y] of p) {
          ctx.beginPath();
          ctx.arc(X(x), Y(y), 3.5, 0, 2 * Math.PI);
          ctx.fill();
        }
      }
      ctx.globalAlpha = 1;
    }
  }

  function legend(id, series) {
    const el = $(id);
    el.replaceChildren();
    for (const s of series) {
      const i = document.createElement('i');
      i.style.background = s.color;
      el.appendChild(i);
      el.appendChild(document.createTextNode(s.name));
    }
  }

  function drawCharts() {
    const h = state.history || { epochs: [], steps: { step: [], lr: [], beta1: [], loss: [], smooth_loss: [] } };
    const st = h.steps;
    const by = (col) => st.step.map((x, i) => [x, col[i]]);
    const total = state.status && state.status.total_steps > 0 ? state.status.total_steps - 1 : 0;
    const last = Math.max(total, st.step.length ? st.step[st.step.length - 1] : 0);
    const loss = [
      { name: 'train (raw)', color: COLORS.raw, points: by(st.loss), width: 1, alpha: 0.45 },
      { name: 'train (smoothed)', color: COLORS.train, points: by(st.smooth_loss) },
      { name: 'valid', color: COLORS.valid, points: h.epochs.map((e) => [e.end_step, e.valid_loss]), markers: true },
    ];
    drawChart($('chart-loss'), loss, { xLabel: 'step', xMin: 0, xMax: last });
    legend('legend-loss', loss);
    const acc = [{ name: 'accuracy', color: COLORS.accuracy, points: h.epochs.map((e) => [e.epoch, e.accuracy]), markers: true }];
    drawChart($('chart-accuracy'), acc, {
      xLabel: 'epoch',
      xMin: 0,
      xMax: Math.max(1, state.status ? state.status.epochs - 1 : 1),
      yCap: 1,
      yFormat: (v) => `${(v * 100).toFixed(Math.abs(v * 100 - Math.round(v * 100)) > 1e-6 ? 1 : 0)} %`,
    });
    legend('legend-accuracy', acc);
    const lr = [{ name: 'lr', color: COLORS.lr, points: by(st.lr) }];
    drawChart($('chart-lr'), lr, { xLabel: 'step', xMin: 0, xMax: last, yFormat: sci });
    legend('legend-lr', lr);
    const b1 = [{ name: 'beta1', color: COLORS.beta1, points: by(st.beta1) }];
    drawChart($('chart-beta1'), b1, { xLabel: 'step', xMin: 0, xMax: last });
    legend('legend-beta1', b1);
  }

  // --- connection ---------------------------------------------------------------------------
  function connect() {
    const es = new EventSource('/events');
    es.addEventListener('open', () => {
      setConn('live', 'live');
      if (state.status && !['finished', 'failed'].includes(state.status.status)) banner(null);
    });
    es.addEventListener('status', (e) => onStatus(JSON.parse(e.data)));
    es.addEventListener('history', (e) => onHistory(JSON.parse(e.data)));
    es.addEventListener('end', (e) => {
      state.ended = true;
      es.close();
      onStatus(JSON.parse(e.data));
      setConn('ended', 'run ended: no more updates');
    });
    es.addEventListener('error', () => {
      if (state.ended) return;
      setConn('reconnecting', 'disconnected: reconnecting…');
      banner('disconnected', 'Lost the connection to the coordinator (stopped, or the network). Reconnecting…');
    });
  }

  let resizeTimer = 0;
  window.addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(drawCharts, 100);
  });
  drawCharts();
  connect();
})();
