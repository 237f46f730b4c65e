"""Triton kernels of FlatAdamW (flat_adamw.py) and its deferred embedding rows (lazy_rows.py). Imported only
when a kernel is first needed, so that the package never needs Triton and TRITON_INTERPRET, set by a test
before that, applies. All three share `_adamw`, torch's AdamW update of one element."""
import triton
import triton.language as tl


@triton.jit
def _adamw(p, g, m, v, lr, beta1, beta2, eps, decay, step_size, bc2_sqrt):
    """torch's AdamW: decoupled weight decay, bias-corrected moments (step_size = lr / (1 - beta1^t),
    bc2_sqrt = sqrt(1 - beta2^t)), eps added after the square root."""
    p = p * (1.0 - lr * decay)
    m = m + (1.0 - beta1) * (g - m)  # torch's exp_avg.lerp_(grad, 1 - beta1)
    v = v * beta2 + (1.0 - beta2) * g * g
    p = p - step_size * m / (tl.sqrt(v) / bc2_sqrt + eps)
    return p, m, v


@triton.jit
def _load_state(p_ptr, m_ptr, v_ptr, offs, mask):
    p = tl.load(p_ptr + offs, mask=mask, other=0.0)
    m = tl.load(m_ptr + offs, mask=mask, other=0.0)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0)
    return p, m, v


@triton.jit
def _store_state(p_ptr, m_ptr, v_ptr, offs, mask, p, m, v):
    tl.store(p_ptr + offs, p, mask=mask)
    tl.store(m_ptr + offs, m, mask=mask)
    tl.store(v_ptr + offs, v, mask=mask)


@triton.jit
def adamw(p_ptr, g_ptr, m_ptr, v_ptr, scale_ptr, n, lr, beta1, beta2, eps, decay, step_size, bc2_sqrt,
          HAS_SCALE: tl.constexpr, BLOCK: tl.constexpr):
    """One step over n contiguous elements; zeroes the gradient it read (zero_grad's work)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(g_ptr + offs, mask=mask, other=0.0)
    if HAS_SCALE:
        g = g / tl.load(scale_ptr)
    p, m, v = _load_state(p_ptr, m_ptr, v_ptr, offs, mask)
    p, m, v = _adamw(p, g, m, v, lr, beta1, beta2, eps, decay, step_size, bc2_sqrt)
    _store_state(p_ptr, m_ptr, v_ptr, offs, mask, p, m, v)
    tl.store(g_ptr + offs, tl.zeros_like(g), mask=mask)


@triton.jit
def _missed_steps(p, m, v, first, last, hist_ptr, beta1, beta2, eps, decay):
    """Steps first..last with a zero gradient, each with its own recorded lr and bias corrections. Once the
    first moment is all zero (from the start for a row never looked up, or when it underflows, ~900 steps
    after the last gradient) a step only decays: the rest is one multiply by the recorded product of
    (1 - lr * decay) and by beta2^k, so a row unseen for 100k steps costs what one unseen for 900 does."""
    s = first
    busy = tl.max(tl.abs(m), axis=0) > 0.0
    while busy & (s <= last):
        lr = tl.load(hist_ptr + 4 * s)
        step_size = tl.load(hist_ptr + 4 * s + 1)
        bc2_sqrt = tl.load(hist_ptr + 4 * s + 2)
        p, m, v = _adamw(p, 0.0, m, v, lr, beta1, beta2, eps, decay, step_size, bc2_sqrt)
        busy = tl.max(tl.abs(m), axis=0) > 0.0
        s += 1
    if s <= last:
        p = p * tl.exp(tl.load(hist_ptr + 4 * last + 3) - tl.load(hist_ptr + 4 * (s - 1) + 3))
        v = v * tl.exp((last - s + 1).to(tl.float32) * tl.log(beta2))
    return p, m, v


@triton.jit
def catch_up_rows(ids_ptr, p_ptr, m_ptr, v_ptr, last_ptr, touched_ptr, count_ptr, hist_ptr, width,
                  beta1, beta2, eps, decay, MARK: tl.constexpr, BLOCK: tl.constexpr):
    """One program per id: bring that row up to the step count. MARK: claim the row in `touched` first
    (an id repeated in the batch is caught up once; the step then updates every claimed row)."""
    row = tl.load(ids_ptr + tl.program_id(0)).to(tl.int64)
    if MARK:
        mine = tl.atomic_xchg(touched_ptr + row, 1) == 0
    else:
        mine = tl.load(touched_ptr + row) >= 0  # always: the ids are distinct
    if mine:
        target = tl.load(count_ptr)
        done = tl.load(last_ptr + row)
        if done < target:
            cols = tl.arange(0, BLOCK)
            mask = cols < width
            offs = row * width + cols
            p, m, v = _load_state(p_ptr, m_ptr, v_ptr, offs, mask)
            p, m, v = _missed_steps(p, m, v, done + 1, target, hist_ptr, beta1, beta2, eps, decay)
            _store_state(p_ptr, m_ptr, v_ptr, offs, mask, p, m, v)
            tl.store(last_ptr + row, target)


@triton.jit
def step_rows(g_ptr, p_ptr, m_ptr, v_ptr, last_ptr, touched_ptr, count_ptr, hist_ptr, scale_ptr, rows, width,
              beta1, beta2, eps, decay, HAS_SCALE: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """One program per ROWS rows; a claimed row catches up to the step before, takes this step with its
    gradient (zeroed after), and is released. Unclaimed rows have a zero gradient and wait. A batch claims
    ~1.5k of XLM-R's 250k rows: most programs read their ROWS flags in one load and stop there, where one
    program per row made 250k of them."""
    first = tl.program_id(0).to(tl.int64) * ROWS
    flags = tl.load(touched_ptr + first + tl.arange(0, ROWS), mask=first + tl.arange(0, ROWS) < rows, other=0)
    if tl.max(flags, axis=0) != 0:
        target = tl.load(count_ptr)
        cols = tl.arange(0, BLOCK)
        mask = cols < width
        for i in range(ROWS):
            row = first + i
            if row < rows:
                if tl.load(touched_ptr + row) != 0:
                    offs = row * width + cols
                    p, m, v = _load_state(p_ptr, m_ptr, v_ptr, offs, mask)
                    g = tl.load(g_ptr + offs, mask=mask, other=0.0)
                    p, m, v = _missed_steps(p, m, v, tl.load(last_ptr + row) + 1, target - 1, hist_ptr, beta1, beta2,
                                            eps, decay)
                    if HAS_SCALE:
                        g = g / tl.load(scale_ptr)
                    p, m, v = _adamw(p, g, m, v, tl.load(hist_ptr + 4 * target), beta1, beta2, eps, decay,
                                     tl.load(hist_ptr + 4 * target + 1), tl.load(hist_ptr + 4 * target + 2))
                    _store_state(p_ptr, m_ptr, v_ptr, offs, mask, p, m, v)
                    tl.store(g_ptr + offs, tl.zeros_like(g), mask=mask)
                    tl.store(last_ptr + row, target)
                    tl.store(touched_ptr + row, 0)


@triton.jit
def claimed_squares(g_ptr, touched_ptr, out_ptr, rows, width, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """Per program, the sum of squares of the gradient over those of its ROWS rows that are claimed (grouped
    as in step_rows): the deferred rows' share of the clipping norm, without reading the unclaimed ones."""
    first = tl.program_id(0).to(tl.int64) * ROWS
    flags = tl.load(touched_ptr + first + tl.arange(0, ROWS), mask=first + tl.arange(0, ROWS) < rows, other=0)
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    if tl.max(flags, axis=0) != 0:
        cols = tl.arange(0, BLOCK)
        mask = cols < width
        for i in range(ROWS):
            row = first + i
            if row < rows:
                if tl.load(touched_ptr + row) != 0:
                    g = tl.load(g_ptr + row * width + cols, mask=mask, other=0.0)
                    total += g * g
    tl.store(out_ptr + tl.program_id(0), tl.sum(total, axis=0))
