# What the epoch kernels' thread teams share on a busy machine (the linear team in
# _linear.pyx; the MLP team can take the same): the calling thread's CPU clock, the
# CPU-share rule's window, and the back-off of the next epochs to one thread.
#
# The CPU-share rule. A team's master compares its thread's CPU time with the wall time
# over windows of a few milliseconds. Below `share` of the wall time, more threads want
# the cores than there are (another process is busy): a helper then takes the master's
# turns on a core, in meetings each too short for a rule that times waits, and in
# epochs shorter than a timing window. In a short epoch (expected under `short_epoch`
# seconds) the team leaves at once; in a longer one the master first times itself alone
# over at least `window` seconds and four batches, and the team stays if it was faster
# by `gain` all the same (a thread that spins for a while, another library's after its
# call, takes CPU time without making the team slower than one thread). After a window
# whose share was fine the next look comes 5 windows later. The rule is off where the
# thread CPU clock cannot be read (cgd_thread_cpu() < 0: Windows, whose thread times
# advance by ticks of ~15.6 ms, longer than the windows).
#
# The back-off. An epoch whose team was dropped that way (or timed slower than one
# thread) makes the next 1, 2, 4, ... 16 epochs of the fit run on one thread: on a busy
# machine even a helper waiting for work costs the master time slices. The state is a
# tuple (epochs still to skip, skips after the next drop) in the fit's config dict.
#
# A dismissed helper waits for the end of the epoch on cgd_flag_wait (_openmp.pxd: a
# futex), off the CPU, rather than at the end of the parallel region, where the OpenMP
# runtime would spin.

cdef extern from *:
    """
    /* The calling thread's CPU time in seconds, or -1 where it is not read (see the
       CPU-share rule: off then). */
    #if defined(_WIN32)
    static double cgd_thread_cpu(void) { return -1.0; }
    #else
    #include <time.h>
    #if defined(CLOCK_THREAD_CPUTIME_ID)
    static double cgd_thread_cpu(void) {
        struct timespec ts;
        if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return -1.0;
        return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
    }
    #else
    static double cgd_thread_cpu(void) { return -1.0; }
    #endif
    #endif
    """
    double cgd_thread_cpu() noexcept nogil


cdef struct CpuRule:
    double share        # the master's CPU time / wall time below which the rule fires
    double window       # seconds: the shortest window it is measured over
    double gain         # the team's speed-up over the master alone that keeps it
    double short_epoch  # seconds: epochs expected shorter drop the team without timing


cdef inline CpuRule cpu_rule_default() noexcept nogil:
    cdef CpuRule r
    r.share = 0.8
    r.window = 2e-3
    r.gain = 1.05
    r.short_epoch = 50e-3
    return r


cdef struct CpuWatch:
    double w0, c0       # the window's start: wall time, the master's CPU time
    double rows         # rows done since w0
    double span         # seconds before the next look
    double rate_team    # rows per second of the team before a probe
    double rate_solo    # of the master alone in that probe
    Py_ssize_t probe_batches  # batches of the probe so far
    int probing         # the master is timing itself alone
    int probes          # probes begun this epoch (tests, stats)


cdef enum:
    CPU_STAY = 0        # nothing changes
    CPU_DROP = 1        # the team leaves for the rest of the epoch (and backs off)
    CPU_PROBE = 2       # from now on the master alone, timing itself
    CPU_BACK = 3        # the probe is over and the team won: back to the team


cdef inline void cpu_watch_start(CpuWatch* cw, const CpuRule* rule, double now) noexcept nogil:
    """A window from now (the epoch's start, or the team's return)."""
    cw.w0 = now
    cw.c0 = cgd_thread_cpu()
    cw.rows = 0.0
    cw.span = rule.window
    cw.probing = 0
    cw.probe_batches = 0


cdef inline int cpu_watch(CpuWatch* cw, const CpuRule* rule, double mb, double now,
                          double elapsed, double done, double total) noexcept nogil:
    """The master's look after a batch of mb rows, at wall time now, `elapsed` seconds
    into an epoch with `done` of its `total` batches done: one of CPU_STAY, CPU_DROP,
    CPU_PROBE (the team must now wait while the master runs alone; call again after
    each batch), CPU_BACK (the probe is over and the team stays)."""
    cdef double cpu
    cw.rows += mb
    if cw.probing:
        cw.probe_batches += 1
        if cw.probe_batches < 4 or now - cw.w0 < rule.window:
            return CPU_STAY
        cw.rate_solo = cw.rows / (now - cw.w0) if now > cw.w0 else 1e300
        cw.probing = 0
        if cw.rate_team > rule.gain * cw.rate_solo:
            # (a passing hiccup: look at the share again only after a longer window)
            cpu_watch_start(cw, rule, now)
            cw.span = 5 * rule.window
            return CPU_BACK
        return CPU_DROP
    if now - cw.w0 < cw.span:
        return CPU_STAY
    cpu = cgd_thread_cpu()
    if cpu >= 0.0 and cpu - cw.c0 < rule.share * (now - cw.w0):
        if elapsed * total < rule.short_epoch * done:
            return CPU_DROP
        cw.rate_team = cw.rows / (now - cw.w0)
        cw.probing = 1
        cw.probes += 1
        cw.probe_batches = 0
        cw.w0 = now
        cw.rows = 0.0
        return CPU_PROBE
    if now - cw.w0 >= 5 * rule.window:
        cw.span = rule.window
        cw.w0 = now
        cw.c0 = cpu
        cw.rows = 0.0
    return CPU_STAY


cdef inline int backoff_threads(dict config, int nt, bint on) except -1:
    """The epoch's thread count: 1 while the fit backs off (see above; `on` False: never,
    as when tests switch the team's timing off), else nt."""
    skip, next_skip = config.get("team_backoff", (0, 1))
    if nt > 1 and skip > 0 and on:
        config["team_backoff"] = (skip - 1, next_skip)
        return 1
    return nt


cdef inline int backoff_record(dict config, bint dropped) except -1:
    """After an epoch that ran a team: back off twice as long as last time (up to 16
    epochs) when the team was dropped, else not at all."""
    skip, next_skip = config.get("team_backoff", (0, 1))
    config["team_backoff"] = (next_skip, min(2 * next_skip, 16)) if dropped else (0, 1)
    return 0
