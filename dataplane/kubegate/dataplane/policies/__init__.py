"""Runtime state machines of the route policies: pure, synchronous, and free of clocks and sockets.

The compiler turns ``GatewayRoute.spec`` into frozen config (:mod:`kubegate.compiler.policy`); the snapshot
builds, per route and backend, the objects of this package from it; the proxy calls them at a few named
points of an exchange (request head → bulkhead → breaker ``allow`` → balancer ``pick`` → upstream attempt
→ ``record`` on the breaker and the outlier detector → retry decision, budget and backoff → response done).
None of them reads a clock, sleeps, draws from the global random generator or touches the network: every
method that depends on time takes ``now`` (seconds of a monotonic clock, a plain float) and every random
choice comes from an injected ``random.Random``. That keeps each one cheap enough for the hot path (plain
classes with ``__slots__``, O(1) per call on the common path, no pydantic at runtime), lets the proxy read
the clock once per event and share the reading, and lets the tests drive every transition (a breaker's
open duration, an ejection growing to 10x, a rolling window sliding past old failures) with floats and
fixed seeds instead of sleeps. The waiting itself (a queue timeout, a backoff, a probe interval) is the
caller's: it owns the event loop and the timers, these objects only say how long and what happens next.

Traffic policies: :mod:`.endpoints` (per-endpoint state and the panic-mode set), :mod:`.balancing`
(round robin, random, least request, consistent hash), :mod:`.breaker`, :mod:`.outlier`, :mod:`.health`
(thresholds only; the prober is elsewhere), :mod:`.bulkhead`, :mod:`.retry` (budget, backoff, what may be
retried). Edge policies (wired to the exchange by :mod:`kubegate.dataplane.edge`): :mod:`.cors`,
:mod:`.transforms` (header edits, rewrite, redirect), :mod:`.jwt` and :mod:`.apikey` (credential checks,
with the wall clock injected: token times are Unix times).

One exception to "no sockets": :mod:`.jwks` fetches JSON Web Key Sets in the background (an issuer's keys
must be fetched by each replica); the verification that reads them stays synchronous and pure.
"""
