/* The forwarding fast path's per-datagram loop, compiled (relay.media._fastloop).
 *
 * relay/media/fastloop.py is the Python side and docs/media.md ("The compiled loop") the
 * design. In short: ``Loop.pump(epoll_fd)`` reads every ready media socket of one event
 * loop with recvmmsg, and for each datagram that arrives on a socket a ``Route`` is
 * attached to (one forwarding direction: the receiving leg's socket) and is RTP, does
 * what ``FastOpusForwarder`` does in Python:
 *
 *     SRTP unprotect -> header rewrite -> SRTP protect -> sendmmsg on the other leg
 *
 * with the same checks, the same counters and the same rewrite. Everything else is handed
 * back to Python as a list of tuples ("punts"), in arrival order:
 *
 *     (PUNT_RAW, fd, data, addr)        a datagram for the socket's protocol (STUN, DTLS,
 *                                       SRTCP, RTP of a socket without a route)
 *     (PUNT_PLAIN, route, plain)        decrypted RTP the route's owner handles in Python
 *                                       (a new SSRC; the route paused or unable to send)
 *     (PUNT_SEND, fd, data, addr)       a protected packet the socket did not take now
 *                                       (its transport queues it)
 *     (PUNT_TAP, route, payload, seq, ts, ssrc, marker, arrival)
 *                                       a forwarded packet for the recorder's tap
 *     (PUNT_ERROR, fd, errno)           an error reported on the socket
 *     (PUNT_SYNC, route)                the route's counters are due to be copied into the
 *                                       Python objects that publish them
 *     (PUNT_RTCP_PLAIN, route, plain)   a decrypted SRTCP compound of the route's socket that
 *                                       aiortc's handlers take (feedback, BYE; or more
 *                                       reports than the route keeps until its next sync)
 *
 * SRTCP on a route's socket (the far end's sender and receiver reports, a few compounds a
 * second or one every few seconds per leg) is unprotected here with the route's receive
 * context, parsed as strictly as aiortc's parser, and what aiortc's handlers would keep
 * (the sender info of an SR, every report block, each with its arrival time) is queued on
 * the route until Python syncs it (Route.take_rtcp). See read_rtcp.
 *
 * The same loop also plays endpoints, for the benchmark's load generator and for tests: a
 * sink route (``new_sink``) records every RTP packet its socket receives (arrival time, the
 * kernel's when asked, header fields, optionally the payload) instead of forwarding it, and
 * a ``Source`` sends paced, SRTP-protected RTP from a list of payloads (``Loop.tick``, or
 * every period from a thread of the loop's own that never takes the interpreter:
 * ``Loop.start_ticker``).
 *
 * Each loop also owns the timer a busy socket set's polls run on (a timerfd: ``arm_tick``,
 * ``clear_tick``; relay.media.udp.MediaSockets watches it beside the sockets' epoll set), so
 * that a poll can be due a window after the previous one started, to the microsecond.
 *
 * The loop can also do all of this on a thread of its own, without the interpreter
 * (``Loop.start_forwarding``, the relay's default): the punts are then queued as records
 * (Punt) and made into the same tuples when the event loop takes them (``take_punts``),
 * woken through ``notify_fd``. A pump queues them the same way and makes them at its end.
 * One lock, "the media lock" below, keeps the thread and the interpreter apart.
 *
 * The libsrtp used is the one pylibsrtp loaded: its srtp_protect/srtp_unprotect
 * addresses are handed in once (set_srtp) and every route gets the srtp_t contexts of
 * its legs' pylibsrtp sessions, holding a reference to the session objects so that the
 * contexts outlive the route. Nothing here calls back into Python while a pump reads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <math.h>
#include <netinet/in.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#ifndef SO_TIMESTAMPNS
#define SO_TIMESTAMPNS 35
#endif
#ifndef SCM_TIMESTAMPNS
#define SCM_TIMESTAMPNS SO_TIMESTAMPNS
#endif

/* The limits of relay.media.aiortc_private.SrtpCodec, so both paths refuse the same. */
#define SRTP_BUFFER 1500
#define SRTP_MAX_TRAILER (16 + 128)
/* Datagrams read per recvmmsg and sent per sendmmsg. */
#define VLEN 16
/* Receive slots hold the largest UDP payload: no datagram is ever truncated. The odd
 * stride keeps the slots' first bytes out of one cache set. */
#define RECV_SLOT 65536
#define RECV_STRIDE (RECV_SLOT + 256)
#define SEND_STRIDE 2048
#define MAX_EVENTS 256
#define EXT_MAX 64
#define MAX_FD (1 << 22)

#define PUNT_RAW 0
#define PUNT_PLAIN 1
#define PUNT_SEND 2
#define PUNT_TAP 3
#define PUNT_ERROR 4
#define PUNT_SYNC 5
#define PUNT_RTCP_PLAIN 6
/* A queued record of a socket that closed since (forget_fd): never made into a tuple. */
#define PUNT_SKIP 255

/* RTCP packet types (RFC 3550, RFC 4585). */
#define RTCP_SR 200
#define RTCP_RR 201
#define RTCP_SDES 202
#define RTCP_BYE 203
#define RTCP_RTPFB 205
#define RTCP_PSFB 206
/* Report events a route keeps between two syncs: an SR's sender info counts one, each
 * report block one. A far end sends a few compounds a second at most (an aiortc peer two:
 * its sender's SR and its receiver's RR; a browser one every few seconds), and the relay's
 * own report on the leg (every few seconds) syncs the route first; the route is synced
 * once half are used, and a compound that does not fit goes to Python whole (after the
 * queued ones: nothing is lost or reordered). */
#define RTCP_PENDING 16
/* Routes a pump syncs at most, urgent ones apart. Every route of a busy loop falls due once
 * a sync_interval, and routes set up (or synced) together fall due together: 600 routes'
 * syncs in Python (some 20 us each) in one pump held up the datagrams behind it by 10 ms
 * once a second (the hop's p99 at 300 interviews: docs/benchmarks.md, "Route syncs spread
 * over pumps"). Spread over pumps they stay spread: a route's next sync counts from its
 * own (and the flush timer leaves flowing routes to the pumps: loop_take_due). A busy loop
 * pumps hundreds of times a second, so 16 a pump is far more than due. */
#define SYNCS_PER_PUMP 16
#define RTCP_EVENT_SR 0
#define RTCP_EVENT_BLOCK 1

#define KIND_FORWARD 0
#define KIND_SINK 1
/* A sink's record: arrival (double, wall clock), timestamp, SSRC (uint32), sequence number,
 * payload length (uint16), little-endian as the host: struct "=dIIHH". */
#define RECORD_SIZE 20

typedef int (*srtp_fn)(void *ctx, void *header, int *length);

static srtp_fn srtp_protect_fn = NULL;
static srtp_fn srtp_unprotect_fn = NULL;
static srtp_fn srtp_unprotect_rtcp_fn = NULL;

/* ------------------------------------------------------------------ the media lock */

/* One lock, recursive, for every loop's routes and queues and for the libsrtp contexts the
 * routes share with aiortc. A loop's forwarder thread (start_forwarding) reads, forwards
 * and queues under it without the interpreter; the interpreter's side takes it in every
 * method that touches what the forwarder does, and around its own use of those libsrtp
 * contexts (relay.media.fastloop.locked, aiortc_private.LockedSrtpSession): libsrtp adds a
 * stream to its session's list on a new SSRC's first packet, and aiortc protects its RTCP
 * with the very session whose RTP the forwarder protects.
 *
 * Order: the interpreter's threads take the GIL first, then this lock; the forwarder takes
 * only this lock. A thread of the interpreter that cannot have it at once lets go of the
 * GIL while it waits (lock_media), so no two of them can hold one each and wait for the
 * other; the forwarder never waits for the GIL, so whoever holds the lock lets go of it. */
static pthread_mutex_t media_lock;

static void lock_media(void) {
    if (pthread_mutex_trylock(&media_lock) == 0)
        return;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&media_lock);
    Py_END_ALLOW_THREADS
}

static void unlock_media(void) { pthread_mutex_unlock(&media_lock); }

/* ------------------------------------------------------------------ clocks */

static double monotonic_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static double realtime_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------ Route */

/* What aiortc's handlers read of one SR's sender info or one report block. */
typedef struct {
    int kind;            /* RTCP_EVENT_SR or RTCP_EVENT_BLOCK */
    unsigned int ssrc;   /* the packet's SSRC: the sender (SR) or the reporter */
    double arrival;      /* wall clock */
    unsigned long long ntp;
    unsigned int rtp_ts, packets, octets;       /* SR */
    unsigned int block_ssrc, fraction, highest; /* block */
    int lost;                                   /* block: 24-bit signed */
    unsigned int jitter, lsr, dlsr;             /* block */
} RtcpEvent;

typedef struct Route {
    PyObject_HEAD
    int kind;
    /* Wiring. */
    int in_fd;
    int out_fd; /* -1: cannot send (the socket closed): packets go to Python */
    struct sockaddr_storage out_addr;
    socklen_t out_addrlen;
    void *rx_ctx;
    void *tx_ctx;
    PyObject *rx_session; /* keep the contexts alive */
    PyObject *tx_session;
    PyObject *owner;
    Py_ssize_t index;       /* in the loop's route array; -1 when detached */
    Py_ssize_t dirty_index; /* in the loop's dirty array; -1 when clean */
    /* Rewrite. */
    unsigned int ssrc; /* the incoming SSRC the offsets belong to */
    unsigned int out_ssrc;
    int out_pt;
    unsigned int seq_off;
    unsigned int ts_off;
    uint8_t opus[16]; /* bitmap of the payload types accepted as Opus */
    int level_in;     /* one-byte extension id of the incoming audio level; -1 none */
    uint8_t ext_plain[EXT_MAX];
    Py_ssize_t ext_plain_len;
    uint8_t ext_level[EXT_MAX]; /* the same block with an audio-level element */
    Py_ssize_t ext_level_len;   /* 0: the level is not carried over */
    Py_ssize_t level_at;        /* where the level byte goes in ext_level */
    char tap;    /* T_BOOL members are a char */
    char paused; /* Python owns the route's packets until plain_handled resumes it */
    int plain_pending; /* PUNT_PLAIN records queued (or taken) and not yet handled */
    /* Counters (DirectionStats). */
    unsigned long long packets_in;
    unsigned long long bytes_in;
    unsigned long long forwarded;
    unsigned long long forwarded_bytes;
    unsigned long long dropped_invalid;
    unsigned long long dropped_duplicate; /* SRTP's replay check: a copy of one taken */
    unsigned long long dropped_late;      /* SRTP's replay check: behind its window */
    unsigned long long dropped_other_codec;
    double first_packet_at; /* NaN: none yet */
    double last_packet_at;
    /* Sending state (FastOpusForwarder). */
    unsigned int hi_seq;
    unsigned int hi_ts;
    double last_forward_at; /* NaN: none yet */
    unsigned long long packets_sent;
    unsigned long long octets_sent;
    /* Sender report state (what the sender's RTCP task reports). */
    unsigned long long ntp_base;
    unsigned long long sr_ntp;
    unsigned int sr_rtp_ts;
    /* Receiver statistics (aiortc's StreamStatistics), -1: None. */
    long long base_seq;
    long long max_seq;
    long long cycles;
    long long received;
    long long jitter_q4;
    long long last_arrival;
    long long last_timestamp;
    int clock_rate;
    /* The far end's reports not yet synced, oldest first. */
    RtcpEvent rtcp[RTCP_PENDING];
    int rtcp_pending;
    unsigned long long rtcp_read;      /* compounds read here */
    unsigned long long rtcp_to_python; /* handed to aiortc's handlers (PUNT_RTCP_PLAIN) */
    unsigned long long rtcp_dropped;   /* refused: SRTCP checks, or malformed */
    /* Syncing with Python. */
    double last_sync;
    int urgent;
    /* Sinks: what arrived, until taken. */
    int keep_payloads;
    char *records;
    Py_ssize_t records_len, records_cap;
    char *payloads;
    Py_ssize_t payloads_len, payloads_cap;
} Route;

static PyTypeObject RouteType;

static int route_traverse(Route *self, visitproc visit, void *arg) {
    Py_VISIT(self->rx_session);
    Py_VISIT(self->tx_session);
    Py_VISIT(self->owner);
    return 0;
}

static int route_clear(Route *self) {
    Py_CLEAR(self->rx_session);
    Py_CLEAR(self->tx_session);
    Py_CLEAR(self->owner);
    return 0;
}

static void route_dealloc(Route *self) {
    PyObject_GC_UnTrack(self);
    route_clear(self);
    PyMem_RawFree(self->records); /* grown by a forwarder thread too (grow) */
    PyMem_RawFree(self->payloads);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int parse_address(int family, const char *host, int port, struct sockaddr_storage *out,
                         socklen_t *len) {
    memset(out, 0, sizeof(*out));
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "port out of range");
        return -1;
    }
    if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)out;
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &sin->sin_addr) != 1) {
            PyErr_Format(PyExc_ValueError, "not an IPv4 address: %s", host);
            return -1;
        }
        *len = sizeof(*sin);
        return 0;
    }
    if (family == AF_INET6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)out;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1) {
            PyErr_Format(PyExc_ValueError, "not an IPv6 address: %s", host);
            return -1;
        }
        *len = sizeof(*sin6);
        return 0;
    }
    PyErr_SetString(PyExc_ValueError, "family must be AF_INET or AF_INET6");
    return -1;
}

static void *context_pointer(PyObject *value) {
    void *ptr = PyLong_AsVoidPtr(value);
    if (ptr == NULL && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "a null SRTP context");
    return ptr;
}

static int route_init(Route *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"in_fd",      "out_fd", "family", "host", "port", "rx_session",
                             "rx_context", "tx_session", "tx_context", "owner", NULL};
    int in_fd, out_fd, family, port;
    const char *host;
    PyObject *rx_session, *rx_context, *tx_session, *tx_context, *owner;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iiisiOOOOO", kwlist, &in_fd, &out_fd, &family,
                                     &host, &port, &rx_session, &rx_context, &tx_session,
                                     &tx_context, &owner))
        return -1;
    if (in_fd < 0 || in_fd >= MAX_FD || out_fd < 0 || out_fd >= MAX_FD) {
        PyErr_SetString(PyExc_ValueError, "descriptor out of range");
        return -1;
    }
    if (parse_address(family, host, port, &self->out_addr, &self->out_addrlen) < 0)
        return -1;
    void *rx = context_pointer(rx_context);
    if (rx == NULL)
        return -1;
    void *tx = context_pointer(tx_context);
    if (tx == NULL)
        return -1;
    self->in_fd = in_fd;
    self->out_fd = out_fd;
    self->rx_ctx = rx;
    self->tx_ctx = tx;
    Py_INCREF(rx_session);
    Py_XSETREF(self->rx_session, rx_session);
    Py_INCREF(tx_session);
    Py_XSETREF(self->tx_session, tx_session);
    Py_INCREF(owner);
    Py_XSETREF(self->owner, owner);
    self->index = -1;
    self->dirty_index = -1;
    self->out_pt = 0;
    self->level_in = -1;
    self->ext_plain_len = 0;
    self->ext_level_len = 0;
    self->level_at = 0;
    self->first_packet_at = NAN;
    self->last_packet_at = NAN;
    self->last_forward_at = NAN;
    self->base_seq = -1;
    self->max_seq = -1;
    self->last_arrival = -1;
    self->last_timestamp = -1;
    self->clock_rate = 48000;
    self->last_sync = monotonic_s();
    return 0;
}

static PyObject *route_set_rewrite(Route *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"out_ssrc", "out_pt", "opus", "level_in", "ext_plain", "ext_level",
                             "level_at", NULL};
    unsigned int out_ssrc;
    int out_pt, level_in;
    PyObject *opus;
    Py_buffer plain, level;
    Py_ssize_t level_at;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "IiOiy*y*n", kwlist, &out_ssrc, &out_pt, &opus,
                                     &level_in, &plain, &level, &level_at))
        return NULL;
    PyObject *result = NULL;
    uint8_t bitmap[16] = {0};
    PyObject *iter = NULL, *item = NULL;
    if (out_pt < 0 || out_pt > 127 || level_in < -1 || level_in > 14) {
        PyErr_SetString(PyExc_ValueError, "payload type or extension id out of range");
        goto done;
    }
    if (plain.len > EXT_MAX || level.len > EXT_MAX || plain.len % 4 || level.len % 4 ||
        (level.len && (level_at < 0 || level_at >= level.len))) {
        PyErr_SetString(PyExc_ValueError, "bad extension blocks");
        goto done;
    }
    iter = PyObject_GetIter(opus);
    if (iter == NULL)
        goto done;
    while ((item = PyIter_Next(iter)) != NULL) {
        long pt = PyLong_AsLong(item);
        Py_DECREF(item);
        if (pt == -1 && PyErr_Occurred())
            goto done;
        if (pt < 0 || pt > 127) {
            PyErr_SetString(PyExc_ValueError, "payload type out of range");
            goto done;
        }
        bitmap[pt >> 3] |= (uint8_t)(1u << (pt & 7));
    }
    if (PyErr_Occurred())
        goto done;
    lock_media();
    self->out_ssrc = out_ssrc;
    self->out_pt = out_pt;
    memcpy(self->opus, bitmap, sizeof(bitmap));
    self->level_in = level_in;
    memcpy(self->ext_plain, plain.buf, (size_t)plain.len);
    self->ext_plain_len = plain.len;
    memcpy(self->ext_level, level.buf, (size_t)level.len);
    self->ext_level_len = level.len;
    self->level_at = level.len ? level_at : 0;
    unlock_media();
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(iter);
    PyBuffer_Release(&plain);
    PyBuffer_Release(&level);
    return result;
}

/* A sink's records and payloads so far, as bytes; the sink starts empty again. */
static PyObject *route_take_records(Route *self, PyObject *unused) {
    lock_media();
    PyObject *out = Py_BuildValue("(y#y#)", self->records ? self->records : "",
                                  self->records_len, self->payloads ? self->payloads : "",
                                  self->payloads_len);
    if (out != NULL) {
        self->records_len = 0;
        self->payloads_len = 0;
    }
    unlock_media();
    return out;
}

/* The far end's reports queued since the last call, oldest first; the queue is empty after.
 * (0, ssrc, arrival, ntp, rtp_ts, packets, octets) for an SR's sender info,
 * (1, ssrc, arrival, block_ssrc, fraction_lost, packets_lost, highest, jitter, lsr, dlsr)
 * for a report block (of an SR or an RR). */
static PyObject *route_take_rtcp(Route *self, PyObject *unused) {
    lock_media();
    PyObject *out = PyTuple_New(self->rtcp_pending);
    if (out == NULL) {
        unlock_media();
        return NULL;
    }
    for (int i = 0; i < self->rtcp_pending; i++) {
        const RtcpEvent *e = &self->rtcp[i];
        PyObject *item;
        if (e->kind == RTCP_EVENT_SR)
            item = Py_BuildValue("(iIdKIII)", e->kind, e->ssrc, e->arrival, e->ntp, e->rtp_ts,
                                 e->packets, e->octets);
        else
            item = Py_BuildValue("(iIdIIiIIII)", e->kind, e->ssrc, e->arrival, e->block_ssrc,
                                 e->fraction, e->lost, e->highest, e->jitter, e->lsr, e->dlsr);
        if (item == NULL) {
            unlock_media();
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, i, item);
    }
    self->rtcp_pending = 0;
    unlock_media();
    return out;
}

/* A PUNT_PLAIN of the route is handled; ``resume``: the loop may go on with the route's
 * packets, which it does once no other is waiting in Python (with the forwarder thread,
 * later packets of the paused route may be queued behind this one, and must not be
 * overtaken by packets the loop forwards). Whether the route is forwarding again. */
static PyObject *route_plain_handled(Route *self, PyObject *arg) {
    int resume = PyObject_IsTrue(arg);
    if (resume < 0)
        return NULL;
    lock_media();
    if (self->plain_pending > 0)
        self->plain_pending--;
    if (resume && self->plain_pending == 0)
        self->paused = 0;
    int forwarding = !self->paused;
    unlock_media();
    return PyBool_FromLong(forwarding);
}

static PyMethodDef route_methods[] = {
    {"plain_handled", (PyCFunction)route_plain_handled, METH_O,
     "plain_handled(resume): a PUNT_PLAIN of the route is handled; with resume, the loop "
     "forwards its packets again once none is waiting in Python; whether it does"},
    {"take_rtcp", (PyCFunction)route_take_rtcp, METH_NOARGS,
     "the far end's report events queued since the last call, oldest first: "
     "(0, ssrc, arrival, ntp, rtp_ts, packets, octets) for an SR's sender info, "
     "(1, ssrc, arrival, block_ssrc, fraction_lost, packets_lost, highest, jitter, lsr, "
     "dlsr) for a report block"},
    {"set_rewrite", (PyCFunction)(void (*)(void))route_set_rewrite, METH_VARARGS | METH_KEYWORDS,
     "set_rewrite(out_ssrc, out_pt, opus, level_in, ext_plain, ext_level, level_at)"},
    {"take_records", (PyCFunction)route_take_records, METH_NOARGS,
     "a sink's (records, payloads) so far; records are struct '=dIIHH' (arrival, "
     "timestamp, ssrc, sequence number, payload length)"},
    {NULL}};

#define RW(name, type) {#name, type, offsetof(Route, name), 0, NULL}
#define RO(name, type) {#name, type, offsetof(Route, name), READONLY, NULL}

static PyMemberDef route_members[] = {
    RO(kind, T_INT),
    RO(in_fd, T_INT),
    RO(out_fd, T_INT),
    RO(owner, T_OBJECT),
    RW(ssrc, T_UINT),
    RW(seq_off, T_UINT),
    RW(ts_off, T_UINT),
    RW(tap, T_BOOL),
    RW(paused, T_BOOL),
    RW(packets_in, T_ULONGLONG),
    RW(bytes_in, T_ULONGLONG),
    RW(forwarded, T_ULONGLONG),
    RW(forwarded_bytes, T_ULONGLONG),
    RW(dropped_invalid, T_ULONGLONG),
    RW(dropped_duplicate, T_ULONGLONG),
    RW(dropped_late, T_ULONGLONG),
    RW(dropped_other_codec, T_ULONGLONG),
    RW(first_packet_at, T_DOUBLE),
    RW(last_packet_at, T_DOUBLE),
    RW(hi_seq, T_UINT),
    RW(hi_ts, T_UINT),
    RW(last_forward_at, T_DOUBLE),
    RW(packets_sent, T_ULONGLONG),
    RW(octets_sent, T_ULONGLONG),
    RW(ntp_base, T_ULONGLONG),
    RW(sr_ntp, T_ULONGLONG),
    RW(sr_rtp_ts, T_UINT),
    RW(base_seq, T_LONGLONG),
    RW(max_seq, T_LONGLONG),
    RW(cycles, T_LONGLONG),
    RW(received, T_LONGLONG),
    RW(jitter_q4, T_LONGLONG),
    RW(last_arrival, T_LONGLONG),
    RW(last_timestamp, T_LONGLONG),
    RW(clock_rate, T_INT),
    RO(rtcp_pending, T_INT),
    RO(plain_pending, T_INT),
    RO(rtcp_read, T_ULONGLONG),
    RO(rtcp_to_python, T_ULONGLONG),
    RO(rtcp_dropped, T_ULONGLONG),
    {NULL}};

static PyTypeObject RouteType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "relay.media._fastloop.Route",
    .tp_doc = "One forwarding direction: the receiving leg's socket to the sending leg's.",
    .tp_basicsize = sizeof(Route),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)route_init,
    .tp_dealloc = (destructor)route_dealloc,
    .tp_traverse = (traverseproc)route_traverse,
    .tp_clear = (inquiry)route_clear,
    .tp_members = route_members,
    .tp_methods = route_methods,
};

/* ------------------------------------------------------------------ Source */

typedef struct {
    PyObject_HEAD
    int fd;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    void *tx_ctx;
    PyObject *tx_session;
    PyObject *payloads; /* a tuple of bytes, sent in turn */
    unsigned int ssrc;
    int pt;
    uint8_t ext[EXT_MAX];
    Py_ssize_t ext_len;
    double start; /* monotonic: frame n is due at start + n * period */
    double period;
    long long next;
    unsigned int seq0, ts0, frame_ticks;
    double *sent; /* wall clock when frame n went out */
    Py_ssize_t sent_cap;
    unsigned long long sent_packets, send_errors;
} Source;

static PyTypeObject SourceType;

static int source_traverse(Source *self, visitproc visit, void *arg) {
    Py_VISIT(self->tx_session);
    Py_VISIT(self->payloads);
    return 0;
}

static int source_clear(Source *self) {
    Py_CLEAR(self->tx_session);
    Py_CLEAR(self->payloads);
    return 0;
}

static void source_dealloc(Source *self) {
    PyObject_GC_UnTrack(self);
    source_clear(self);
    PyMem_RawFree(self->sent); /* grown by the ticker thread too, without the interpreter */
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int source_init(Source *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"fd",  "family", "host",     "port",   "tx_session", "tx_context",
                             "ssrc", "pt",    "ext",      "payloads", "start",    "period",
                             "seq0", "ts0",   "frame_ticks", NULL};
    int fd, family, port, pt;
    const char *host;
    PyObject *tx_session, *tx_context, *payloads;
    unsigned int ssrc, seq0 = 0, ts0 = 0, frame_ticks = 960;
    Py_buffer ext;
    double start, period = 0.02;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iisiOOIiy*Od|dIII", kwlist, &fd, &family,
                                     &host, &port, &tx_session, &tx_context, &ssrc, &pt, &ext,
                                     &payloads, &start, &period, &seq0, &ts0, &frame_ticks))
        return -1;
    int rc = -1;
    if (fd < 0 || pt < 0 || pt > 127 || ext.len > EXT_MAX || ext.len % 4 || !(period > 0.0)) {
        PyErr_SetString(PyExc_ValueError, "bad source parameters");
        goto done;
    }
    if (!PyTuple_Check(payloads) || PyTuple_GET_SIZE(payloads) == 0) {
        PyErr_SetString(PyExc_ValueError, "payloads: a non-empty tuple of bytes");
        goto done;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(payloads); i++) {
        PyObject *item = PyTuple_GET_ITEM(payloads, i);
        if (!PyBytes_Check(item) ||
            12 + ext.len + PyBytes_GET_SIZE(item) > SRTP_BUFFER - SRTP_MAX_TRAILER) {
            PyErr_SetString(PyExc_ValueError, "payloads: bytes that fit one packet");
            goto done;
        }
    }
    if (parse_address(family, host, port, &self->addr, &self->addrlen) < 0)
        goto done;
    void *tx = context_pointer(tx_context);
    if (tx == NULL)
        goto done;
    self->fd = fd;
    self->tx_ctx = tx;
    Py_INCREF(tx_session);
    Py_XSETREF(self->tx_session, tx_session);
    Py_INCREF(payloads);
    Py_XSETREF(self->payloads, payloads);
    self->ssrc = ssrc;
    self->pt = pt;
    memcpy(self->ext, ext.buf, (size_t)ext.len);
    self->ext_len = ext.len;
    self->start = start;
    self->period = period;
    self->next = 0;
    self->seq0 = seq0;
    self->ts0 = ts0;
    self->frame_ticks = frame_ticks;
    rc = 0;
done:
    PyBuffer_Release(&ext);
    return rc;
}

/* The wall-clock times frames 0..next-1 went out, as doubles (NaN: not sent). Read with
 * the source's loop ticker stopped (or never started): the ticker grows the array. */
static PyObject *source_sent_times(Source *self, PyObject *unused) {
    return PyBytes_FromStringAndSize(self->sent ? (const char *)self->sent : "",
                                     (Py_ssize_t)(self->next * (long long)sizeof(double)));
}

static PyMethodDef source_methods[] = {
    {"sent_times", (PyCFunction)source_sent_times, METH_NOARGS,
     "wall-clock send time of each frame so far (doubles; NaN: the socket refused it)"},
    {NULL}};

static PyMemberDef source_members[] = {
    {"next", T_LONGLONG, offsetof(Source, next), READONLY, "frames sent (or refused) so far"},
    {"sent_packets", T_ULONGLONG, offsetof(Source, sent_packets), READONLY, NULL},
    {"send_errors", T_ULONGLONG, offsetof(Source, send_errors), READONLY, NULL},
    {"ssrc", T_UINT, offsetof(Source, ssrc), READONLY, NULL},
    {"start", T_DOUBLE, offsetof(Source, start), 0, "monotonic time of frame 0"},
    {NULL}};

static PyTypeObject SourceType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "relay.media._fastloop.Source",
    .tp_doc = "Paced, SRTP-protected RTP from a list of payloads (Loop.tick sends it).",
    .tp_basicsize = sizeof(Source),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)source_init,
    .tp_dealloc = (destructor)source_dealloc,
    .tp_traverse = (traverseproc)source_traverse,
    .tp_clear = (inquiry)source_clear,
    .tp_members = source_members,
    .tp_methods = source_methods,
};

/* ------------------------------------------------------------------ Loop */

/* One punt, queued: the header, then ``addrlen`` bytes of address, then ``len`` of data,
 * the whole rounded up to 8 bytes. Made without the interpreter (the forwarder queues
 * them); convert_punts makes the tuples the module docstring lists. */
typedef struct {
    uint32_t size;
    uint8_t kind;
    uint8_t marker;
    uint16_t addrlen;
    int fd;
    int err;
    uint32_t len;
    unsigned int seq, ts, ssrc;
    double arrival;
    Route *route; /* borrowed: retire() keeps a detached route until its records are made */
} Punt;


typedef struct {
    PyObject_HEAD
    Route **by_fd; /* borrowed from routes[] */
    uint8_t *held; /* by fd: the socket's transport queues in Python, do not send past it */
    Py_ssize_t fd_cap;
    Route **routes; /* owned references */
    Py_ssize_t n_routes, routes_cap;
    Route **dirty; /* borrowed */
    Py_ssize_t n_dirty, dirty_cap;
    double sync_interval;
    char *rbuf;
    char *sbuf;
    struct mmsghdr rmsgs[VLEN];
    struct iovec riov[VLEN];
    struct sockaddr_storage raddr[VLEN];
    struct mmsghdr smsgs[VLEN];
    struct iovec siov[VLEN];
    struct epoll_event events[MAX_EVENTS];
    /* What is for Python (the punts), queued as records (Punt) until a pump or take_punts
     * turns them into tuples: the forwarder thread cannot make Python objects. */
    char *queue;
    size_t queue_len, queue_cap;
    char *spare; /* the last queue taken, kept for reuse */
    size_t spare_cap;
    unsigned long long punts_dropped; /* the queue was full (Python not draining it) */
    int converting;                   /* pumps or take_punts making tuples now (a count) */
    int out_of_memory;                /* a sink's records could not grow */
    /* Routes detached while records naming them may be queued or being converted: their
     * references are dropped once those are (release_retired). Owned references. */
    Route **retired;
    Py_ssize_t n_retired, retired_cap;
    /* Sinks: the kernel's receive time of each datagram (SO_TIMESTAMPNS on their sockets). */
    int timestamps;
    /* Each message's control buffer, aligned for the cmsghdr the kernel writes at its
     * start (a bare char array after an int is not: reading it is undefined behaviour,
     * which UBSan reports). */
    union {
        char buf[CMSG_SPACE(sizeof(struct timespec))];
        struct cmsghdr align;
    } control[VLEN];
    /* Sources sent by tick() (owned references). */
    PyObject **sources;
    Py_ssize_t n_sources, sources_cap;
    /* Totals since the loop was made. */
    unsigned long long datagrams;
    unsigned long long compiled_forwarded;
    unsigned long long pumps;
    unsigned long long sendmmsg_calls;
    unsigned long long recvmmsg_calls;
    unsigned long long rtcp_read;
    unsigned long long rtcp_to_python;
    unsigned long long rtcp_dropped;
    /* The timer a busy set's polls run on (arm_tick; relay.media.udp.MediaSockets): a
     * timerfd, so a poll can be due a window after the previous one *started*, to the
     * microsecond. The event loop's own timers count whole milliseconds from a clock read
     * before the callbacks ran, so a window there starts after the pump and whatever ran
     * beside it, and busy polls came 2-4 ms apart instead of 1 (docs/benchmarks.md, "Polls
     * at a fixed pace"). Meaningful only once the loop is initialised (rbuf set): before,
     * it is tp_new's zero, which is not ours. */
    int tick_fd;
    /* The sources' own thread (start_ticker): it sends their due frames every period
     * without the interpreter, so that a busy event loop does not hold them back. On the
     * event loop's timers the load generator's sources left in bursts when its process was
     * busy, up to tens of milliseconds late (docs/benchmarks.md, "How late the generator
     * sends"). sources_lock guards the sources against it; it sends from buffers of its
     * own. */
    pthread_mutex_t sources_lock;
    pthread_t ticker;
    int ticker_running;
    int ticker_stop; /* __atomic */
    double ticker_period;
    int ticker_raised;
    char *tbuf;
    struct mmsghdr tmsgs[VLEN];
    struct iovec tiov[VLEN];
    /* The forwarder (start_forwarding): a thread of the loop's own that waits for the
     * sockets, reads and forwards them, and queues the rest for Python, which it wakes
     * through notify_fd (an eventfd) when the queue was empty. On the event loop's thread
     * the forwarding waited behind whatever else the loop ran (callbacks, a full
     * collection: a third of a second at 500 interviews; docs/media.md, "The forwarder
     * thread"). */
    pthread_t forwarder;
    int forwarding;
    int forwarder_stop; /* __atomic */
    int notify_fd;      /* -1: none yet */
    int stop_fd;        /* wakes the forwarder to stop */
    int wait_fd;        /* the forwarder's epoll: the sockets' set and stop_fd */
    int forward_epfd;   /* the sockets' set */
    int forward_rounds;
    long long forward_batch_ns; /* __atomic: busy polls every this often; 0 never */
    int forward_nice;     /* the thread lowers its nice value when it starts */
    int forward_priority; /* __atomic; what it got: 0 as the process, 1 nice -10, 2 FIFO */
    int forward_error;    /* errno that stopped it, 0 none */
    int forward_busy;     /* __atomic: polling every window (busy) rather than waiting */
    int forward_demote;   /* __atomic: leave real-time at the next wake-up (set_batch(0)) */
    unsigned long long wakeups, polls;
} Loop;

static PyTypeObject LoopType;

static int loop_traverse(Loop *self, visitproc visit, void *arg) {
    /* While the forwarder runs, its routes are not the collector's to find: clearing one
     * in a cycle of garbage would free libsrtp contexts the thread is using. They count as
     * referenced from outside until stop_forwarding (the media socket set stops it with
     * its last socket). */
    if (!self->forwarding) {
        for (Py_ssize_t i = 0; i < self->n_routes; i++)
            Py_VISIT((PyObject *)self->routes[i]);
    }
    for (Py_ssize_t i = 0; i < self->n_sources; i++)
        Py_VISIT(self->sources[i]);
    for (Py_ssize_t i = 0; i < self->n_retired; i++)
        Py_VISIT((PyObject *)self->retired[i]);
    return 0;
}

/* ``r`` was detached (under the media lock): its reference goes now, or, while records
 * may name it (the forwarder runs, or a queue is being converted), once they are turned
 * into tuples. Records name only attached routes, so every record naming ``r`` was queued
 * before this: the next drain converts them, then drops it. */
static void retire(Loop *self, Route *r) {
    if (!self->forwarding && !self->converting && self->queue_len == 0) {
        Py_DECREF(r);
        return;
    }
    if (self->n_retired == self->retired_cap) {
        Py_ssize_t cap = self->retired_cap ? self->retired_cap * 2 : 16;
        Route **grown = PyMem_Realloc(self->retired, (size_t)cap * sizeof(Route *));
        if (grown == NULL)
            return; /* its reference is kept for good: leaked, never freed while named */
        self->retired = grown;
        self->retired_cap = cap;
    }
    self->retired[self->n_retired++] = r;
}

/* Drop the references of ``routes`` (taken from ``retired``), without the media lock. */
static void release_retired(Route **routes, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        Py_DECREF(routes[i]);
    PyMem_Free(routes);
}

static void stop_forwarder(Loop *self);

static void loop_drop_routes(Loop *self) {
    lock_media();
    for (Py_ssize_t i = 0; i < self->fd_cap; i++)
        self->by_fd[i] = NULL;
    self->n_dirty = 0;
    while (self->n_routes > 0) {
        Route *r = self->routes[--self->n_routes];
        r->index = -1;
        r->dirty_index = -1;
        retire(self, r);
    }
    unlock_media();
}

static void stop_ticker(Loop *self);
static int send_due(Source *src, struct mmsghdr *msgs, struct iovec *iov);

static void loop_drop_sources(Loop *self) {
    stop_ticker(self);
    while (self->n_sources > 0) {
        PyObject *source = self->sources[--self->n_sources];
        Py_DECREF(source);
    }
}

static int loop_clear(Loop *self) {
    stop_forwarder(self);
    loop_drop_routes(self);
    loop_drop_sources(self);
    /* Nothing converts the queue any more: what it names goes with it. */
    self->queue_len = 0;
    Py_ssize_t n = self->n_retired;
    Route **retired = self->retired;
    self->retired = NULL;
    self->n_retired = self->retired_cap = 0;
    release_retired(retired, n);
    return 0;
}

static void loop_dealloc(Loop *self) {
    PyObject_GC_UnTrack(self);
    loop_clear(self);
    PyMem_RawFree(self->queue);
    PyMem_RawFree(self->spare);
    if (self->rbuf != NULL && self->notify_fd >= 0)
        close(self->notify_fd);
    PyMem_Free(self->by_fd);
    PyMem_Free(self->held);
    PyMem_Free(self->routes);
    PyMem_Free(self->dirty);
    PyMem_Free(self->sources);
    if (self->rbuf != NULL && self->tick_fd >= 0)
        close(self->tick_fd);
    if (self->rbuf != NULL)
        pthread_mutex_destroy(&self->sources_lock); /* the ticker was stopped (loop_clear) */
    PyMem_Free(self->rbuf);
    PyMem_Free(self->sbuf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int loop_init(Loop *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"sync_interval", "timestamps", NULL};
    double sync_interval = 0.2;
    int timestamps = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|dp", kwlist, &sync_interval, &timestamps))
        return -1;
    if (!(sync_interval >= 0.0 && sync_interval <= 60.0)) {
        PyErr_SetString(PyExc_ValueError, "sync_interval must be 0..60 s");
        return -1;
    }
    if (self->rbuf != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Loop already initialised");
        return -1;
    }
    self->sync_interval = sync_interval;
    self->timestamps = timestamps;
    /* From here on rbuf set means tick_fd and notify_fd are ours to close. */
    self->tick_fd = -1;
    self->notify_fd = self->stop_fd = self->wait_fd = -1;
    pthread_mutex_init(&self->sources_lock, NULL);
    self->rbuf = PyMem_Malloc((size_t)VLEN * RECV_STRIDE);
    self->sbuf = PyMem_Malloc((size_t)VLEN * SEND_STRIDE);
    if (self->rbuf == NULL || self->sbuf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (int i = 0; i < VLEN; i++) {
        self->riov[i].iov_base = self->rbuf + (size_t)i * RECV_STRIDE;
        self->riov[i].iov_len = RECV_SLOT;
        self->siov[i].iov_base = self->sbuf + (size_t)i * SEND_STRIDE;
    }
    self->tick_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (self->tick_fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

static int ensure_fd(Loop *self, int fd) {
    if (fd < 0 || fd >= MAX_FD) {
        PyErr_SetString(PyExc_ValueError, "descriptor out of range");
        return -1;
    }
    if (fd < self->fd_cap)
        return 0;
    Py_ssize_t cap = self->fd_cap ? self->fd_cap : 1024;
    while (cap <= fd)
        cap *= 2;
    Route **by_fd = PyMem_Realloc(self->by_fd, (size_t)cap * sizeof(Route *));
    if (by_fd == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->by_fd = by_fd;
    uint8_t *held = PyMem_Realloc(self->held, (size_t)cap);
    if (held == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->held = held;
    for (Py_ssize_t i = self->fd_cap; i < cap; i++) {
        self->by_fd[i] = NULL;
        self->held[i] = 0;
    }
    self->fd_cap = cap;
    return 0;
}

static void dirty_remove(Loop *self, Route *r) {
    Py_ssize_t i = r->dirty_index;
    if (i < 0)
        return;
    Route *last = self->dirty[--self->n_dirty];
    self->dirty[i] = last;
    last->dirty_index = i;
    r->dirty_index = -1;
}

/* The dirty array has room for every attached route (add_route grows it): nothing is
 * allocated here, where the forwarder runs without the interpreter. */
static int dirty_add(Loop *self, Route *r) {
    if (r->dirty_index >= 0)
        return 0;
    if (self->n_dirty == self->dirty_cap)
        return -1; /* cannot be: a route is dirty once at most */
    r->dirty_index = self->n_dirty;
    self->dirty[self->n_dirty++] = r;
    return 0;
}

/* Detach ``r`` from the loop (its reference is dropped by the caller). */
static void detach(Loop *self, Route *r) {
    Py_ssize_t i = r->index;
    if (i < 0)
        return;
    dirty_remove(self, r);
    if (r->in_fd < self->fd_cap && self->by_fd[r->in_fd] == r)
        self->by_fd[r->in_fd] = NULL;
    Route *last = self->routes[--self->n_routes];
    self->routes[i] = last;
    last->index = i;
    r->index = -1;
}

static PyObject *loop_add_route(Loop *self, PyObject *arg) {
    if (!PyObject_TypeCheck(arg, &RouteType)) {
        PyErr_SetString(PyExc_TypeError, "a Route");
        return NULL;
    }
    Route *r = (Route *)arg;
    if (r->index >= 0) {
        PyErr_SetString(PyExc_ValueError, "the route is attached already");
        return NULL;
    }
    if (r->rx_session == NULL) {
        PyErr_SetString(PyExc_ValueError, "the route is not initialised");
        return NULL;
    }
    lock_media();
    if (ensure_fd(self, r->in_fd) < 0 || (r->out_fd >= 0 && ensure_fd(self, r->out_fd) < 0))
        goto fail;
    if (self->n_routes == self->routes_cap) {
        Py_ssize_t cap = self->routes_cap ? self->routes_cap * 2 : 64;
        Route **routes = PyMem_Realloc(self->routes, (size_t)cap * sizeof(Route *));
        if (routes == NULL)
            goto no_memory;
        self->routes = routes;
        self->routes_cap = cap;
    }
    if (self->dirty_cap < self->routes_cap) {
        Route **dirty = PyMem_Realloc(self->dirty, (size_t)self->routes_cap * sizeof(Route *));
        if (dirty == NULL)
            goto no_memory;
        self->dirty = dirty;
        self->dirty_cap = self->routes_cap;
    }
    Route *old = self->by_fd[r->in_fd];
    if (old != NULL) {
        detach(self, old);
        retire(self, old);
    }
    Py_INCREF(r);
    r->index = self->n_routes;
    self->routes[self->n_routes++] = r;
    self->by_fd[r->in_fd] = r;
    r->paused = 0;
    unlock_media();
    Py_RETURN_NONE;
no_memory:
    PyErr_NoMemory();
fail:
    unlock_media();
    return NULL;
}

static PyObject *loop_remove_route(Loop *self, PyObject *arg) {
    if (!PyObject_TypeCheck(arg, &RouteType)) {
        PyErr_SetString(PyExc_TypeError, "a Route");
        return NULL;
    }
    Route *r = (Route *)arg;
    lock_media();
    int attached = r->index >= 0 && r->index < self->n_routes && self->routes[r->index] == r;
    if (attached) {
        detach(self, r);
        retire(self, r);
    }
    unlock_media();
    return PyBool_FromLong(attached);
}

/* A socket is closing: routes reading it go, routes sending on it stop sending (their
 * packets go to Python, which knows the transport is closing). The descriptor may be
 * reused by a new socket as soon as it is closed, so nothing may keep it. */
static PyObject *loop_forget_fd(Loop *self, PyObject *arg) {
    int fd;
    if (!PyArg_Parse(arg, "i", &fd))
        return NULL;
    lock_media();
    if (fd < 0 || fd >= self->fd_cap) {
        unlock_media();
        Py_RETURN_NONE;
    }
    self->held[fd] = 0;
    /* What the socket's queued records hold (a datagram for its protocol, one to send
     * through its transport, an error) must not reach a new socket given the same number
     * before the queue is taken. */
    for (size_t at = 0; at < self->queue_len;) {
        Punt *p = (Punt *)(self->queue + at);
        at += p->size;
        if ((p->kind == PUNT_RAW || p->kind == PUNT_SEND || p->kind == PUNT_ERROR) && p->fd == fd)
            p->kind = PUNT_SKIP;
    }
    Route *r = self->by_fd[fd];
    if (r != NULL) {
        detach(self, r);
        retire(self, r);
    }
    for (Py_ssize_t i = 0; i < self->n_routes; i++) {
        if (self->routes[i]->out_fd == fd)
            self->routes[i]->out_fd = -1;
    }
    /* A source sending on it stops too. */
    for (Py_ssize_t i = 0; i < self->n_sources;) {
        PyObject *source = self->sources[i];
        if (((Source *)source)->fd == fd) {
            self->sources[i] = self->sources[--self->n_sources];
            Py_DECREF(source);
        } else {
            i++;
        }
    }
    unlock_media();
    Py_RETURN_NONE;
}

static PyObject *loop_hold(Loop *self, PyObject *args) {
    int fd, flag;
    if (!PyArg_ParseTuple(args, "ip", &fd, &flag))
        return NULL;
    lock_media();
    int rc = ensure_fd(self, fd);
    if (rc == 0)
        self->held[fd] = (uint8_t)flag;
    unlock_media();
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* Whether ``r`` is to be synced now: urgent, or not synced for ``age`` seconds. */
static int route_due(Route *r, double now, double age) {
    return r->urgent || now - r->last_sync >= age;
}

/* ``r``'s counters are being handed to Python: clean from ``now`` on. */
static void mark_synced(Loop *self, Route *r, double now) {
    r->urgent = 0;
    r->last_sync = now;
    dirty_remove(self, r); /* moves the last dirty route into r's place */
}

/* Every dirty route not synced for ``min_age`` seconds (or urgent), now clean (the caller
 * copies their counters into Python): the flush timer's, for routes whose packets stopped
 * before a pump synced them. The timer asks for routes overdue by its own period: a route
 * still flowing is synced by a pump within milliseconds of falling due, and taking the due
 * ones here would line up every route that happened to be due at that instant again. */
static PyObject *loop_take_due(Loop *self, PyObject *arg) {
    double min_age = PyFloat_AsDouble(arg);
    if (min_age == -1.0 && PyErr_Occurred())
        return NULL;
    lock_media();
    double now = monotonic_s();
    Py_ssize_t n = 0;
    for (Py_ssize_t i = 0; i < self->n_dirty; i++) {
        Route *r = self->dirty[i];
        n += route_due(r, now, min_age);
    }
    /* Made before any route is marked: a failure leaves every route as it was. */
    PyObject *out = PyList_New(n);
    if (out == NULL) {
        unlock_media();
        return NULL;
    }
    Py_ssize_t k = 0;
    for (Py_ssize_t i = 0; i < self->n_dirty && k < n;) {
        Route *r = self->dirty[i];
        if (!route_due(r, now, min_age)) {
            i++;
            continue;
        }
        PyList_SET_ITEM(out, k++, Py_NewRef((PyObject *)r));
        mark_synced(self, r, now); /* the next one is at i now */
    }
    unlock_media();
    return out;
}

/* ------------------------------------------------------------------ punts */

/* The queue's limit: beyond it (Python has not drained it for seconds) a punt is dropped
 * and counted, as a full socket buffer would. A route whose new-SSRC packet is dropped
 * stays paused, and its next packet goes to Python instead. */
#define PUNT_QUEUE_MAX ((size_t)64 << 20)

static Punt *punt_add(Loop *self, int kind, size_t addrlen, size_t len) {
    size_t size = (sizeof(Punt) + addrlen + len + 7) & ~(size_t)7;
    if (self->queue_len + size > self->queue_cap) {
        if (self->queue_len + size > PUNT_QUEUE_MAX) {
            self->punts_dropped++;
            return NULL;
        }
        if (self->queue == NULL && self->spare != NULL) {
            self->queue = self->spare;
            self->queue_cap = self->spare_cap;
            self->spare = NULL;
            self->spare_cap = 0;
        }
        size_t cap = self->queue_cap ? self->queue_cap : 65536;
        while (cap < self->queue_len + size)
            cap *= 2;
        if (cap != self->queue_cap) {
            char *grown = PyMem_RawRealloc(self->queue, cap);
            if (grown == NULL) {
                self->punts_dropped++;
                return NULL;
            }
            self->queue = grown;
            self->queue_cap = cap;
        }
    }
    Punt *p = (Punt *)(self->queue + self->queue_len);
    memset(p, 0, sizeof(*p));
    p->size = (uint32_t)size;
    p->kind = (uint8_t)kind;
    p->addrlen = (uint16_t)addrlen;
    p->len = (uint32_t)len;
    self->queue_len += size;
    return p;
}

static inline char *punt_data(Punt *p) { return (char *)(p + 1) + p->addrlen; }

static void punt_datagram(Loop *self, int kind, int fd, const char *data, size_t len,
                          const struct sockaddr_storage *addr, socklen_t addrlen) {
    if (addrlen > sizeof(*addr))
        addrlen = sizeof(*addr);
    Punt *p = punt_add(self, kind, addrlen, len);
    if (p == NULL)
        return;
    p->fd = fd;
    memcpy(p + 1, addr, addrlen);
    memcpy(punt_data(p), data, len);
}

/* PUNT_PLAIN, PUNT_RTCP_PLAIN, PUNT_SYNC (no data). */
static void punt_route(Loop *self, int kind, Route *r, const uint8_t *data, size_t len) {
    Punt *p = punt_add(self, kind, 0, len);
    if (p == NULL)
        return;
    p->route = r;
    if (kind == PUNT_PLAIN)
        r->plain_pending++;
    if (len)
        memcpy(punt_data(p), data, len);
}

static void punt_error(Loop *self, int fd, int err) {
    Punt *p = punt_add(self, PUNT_ERROR, 0, 0);
    if (p == NULL)
        return;
    p->fd = fd;
    p->err = err;
}

static PyObject *address_tuple(const struct sockaddr_storage *addr, socklen_t len) {
    char text[INET6_ADDRSTRLEN];
    if (addr->ss_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)addr;
        if (inet_ntop(AF_INET, &sin->sin_addr, text, sizeof(text)) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(si)", text, (int)ntohs(sin->sin_port));
    }
    if (addr->ss_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)addr;
        if (inet_ntop(AF_INET6, &sin6->sin6_addr, text, sizeof(text)) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(siII)", text, (int)ntohs(sin6->sin6_port),
                             (unsigned int)ntohl(sin6->sin6_flowinfo),
                             (unsigned int)sin6->sin6_scope_id);
    }
    /* A connected socket may report no address; Python's recvfrom gives None then. */
    Py_RETURN_NONE;
}

static PyObject *punt_tuple(Punt *p) {
    const char *data = punt_data(p);
    Py_ssize_t len = (Py_ssize_t)p->len;
    PyObject *route = (PyObject *)p->route;
    switch (p->kind) {
    case PUNT_RAW:
    case PUNT_SEND: {
        struct sockaddr_storage addr;
        memset(&addr, 0, sizeof(addr));
        memcpy(&addr, p + 1, p->addrlen); /* the record's bytes need not be aligned for it */
        PyObject *where = address_tuple(&addr, p->addrlen);
        if (where == NULL)
            return NULL;
        return Py_BuildValue("(iiy#N)", (int)p->kind, p->fd, data, len, where);
    }
    case PUNT_PLAIN:
    case PUNT_RTCP_PLAIN:
        return Py_BuildValue("(iOy#)", (int)p->kind, route, data, len);
    case PUNT_SYNC:
        return Py_BuildValue("(iO)", PUNT_SYNC, route);
    case PUNT_TAP:
        return Py_BuildValue("(iOy#IIIOd)", PUNT_TAP, route, data, len, p->seq, p->ts, p->ssrc,
                             p->marker ? Py_True : Py_False, p->arrival);
    case PUNT_ERROR:
        return Py_BuildValue("(iii)", PUNT_ERROR, p->fd, p->err);
    }
    PyErr_SetString(PyExc_SystemError, "unknown punt");
    return NULL;
}

/* A taken queue's punts as a list of tuples, in arrival order (None: empty). */
static PyObject *convert_punts(char *queue, size_t len) {
    if (len == 0)
        Py_RETURN_NONE;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (size_t at = 0; at < len;) {
        Punt *p = (Punt *)(queue + at);
        at += p->size;
        if (p->kind == PUNT_SKIP)
            continue;
        PyObject *item = punt_tuple(p);
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(item);
    }
    if (PyList_GET_SIZE(out) == 0) { /* every record skipped */
        Py_DECREF(out);
        Py_RETURN_NONE;
    }
    return out;
}

/* What one drain takes under the media lock, to convert and release without it. */
typedef struct {
    char *queue;
    size_t len, cap;
    Route **retired;
    Py_ssize_t n_retired;
} Taken;

static Taken take_queue(Loop *self) {
    Taken t = {self->queue, self->queue_len, self->queue_cap, self->retired, self->n_retired};
    self->queue = NULL;
    self->queue_len = self->queue_cap = 0;
    self->retired = NULL;
    self->n_retired = self->retired_cap = 0;
    self->converting++;
    return t;
}

/* The tuples of a taken queue (NULL: an error is set), its retired routes released and its
 * buffer kept for the next queue. */
static PyObject *finish_take(Loop *self, Taken *t) {
    PyObject *punts = convert_punts(t->queue, t->len);
    lock_media();
    self->converting--;
    if (self->spare == NULL && t->queue != NULL) {
        self->spare = t->queue;
        self->spare_cap = t->cap;
        t->queue = NULL;
    }
    unlock_media();
    PyMem_RawFree(t->queue);
    release_retired(t->retired, t->n_retired);
    return punts;
}

static int mark(Loop *self, Route *r, int urgent) {
    if (urgent)
        r->urgent = 1;
    return dirty_add(self, r);
}

/* ------------------------------------------------------------------ per packet */

static inline unsigned int be16(const uint8_t *p) { return ((unsigned int)p[0] << 8) | p[1]; }

static inline unsigned int be32(const uint8_t *p) {
    return ((unsigned int)p[0] << 24) | ((unsigned int)p[1] << 16) | ((unsigned int)p[2] << 8) |
           p[3];
}

static inline void put16(uint8_t *p, unsigned int v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void put32(uint8_t *p, unsigned int v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* libsrtp's statuses for what its replay check refused (srtp_err_status_t). */
#define SRTP_REPLAY_FAIL 9
#define SRTP_REPLAY_OLD 10

/* A packet libsrtp refused, by why (as aiortc_private.SrtpCodec.refused on the Python
 * path): a copy of one already taken, one too far behind the newest for the replay
 * window, or anything else (authentication failed, malformed). */
static void count_refused(Route *r, int status) {
    if (status == SRTP_REPLAY_FAIL)
        r->dropped_duplicate++;
    else if (status == SRTP_REPLAY_OLD)
        r->dropped_late++;
    else
        r->dropped_invalid++;
}

/* fastpath.is_rtp: RFC 7983 / RFC 5761 demultiplexing. */
static inline int is_rtp(const uint8_t *d, size_t n) {
    return n >= 12 && d[0] > 127 && d[0] < 192 && !(d[1] > 191 && d[1] < 209);
}

/* fastpath.find_one_byte_extension: the value byte of element ``wanted``, or -1. */
static int find_level(const uint8_t *d, size_t start, size_t end, int wanted) {
    size_t i = start;
    while (i < end) {
        uint8_t b = d[i];
        if (b == 0) {
            i += 1;
            continue;
        }
        int eid = b >> 4;
        if (eid == 15)
            return -1;
        if (eid == wanted)
            return i + 1 < end ? d[i + 1] : -1;
        i += 2 + (size_t)(b & 0x0F);
    }
    return -1;
}

/* aiortc's StreamStatistics.add, on the route's copy of its state. */
static void statistics_add(Route *r, unsigned int seq, unsigned int ts, double wall) {
    int in_order = r->max_seq < 0 || (seq != (unsigned int)r->max_seq &&
                                      ((seq - (unsigned int)r->max_seq) & 0xFFFF) < 0x8000);
    r->received += 1;
    if (r->base_seq < 0)
        r->base_seq = seq;
    if (!in_order)
        return;
    long long arrival = (long long)(wall * r->clock_rate);
    if (r->max_seq >= 0 && (long long)seq < r->max_seq)
        r->cycles += 1 << 16;
    r->max_seq = seq;
    if ((long long)ts != r->last_timestamp && r->received > 1) {
        long long diff = (arrival - r->last_arrival) - ((long long)ts - r->last_timestamp);
        if (diff < 0)
            diff = -diff;
        r->jitter_q4 += diff - ((r->jitter_q4 + 8) >> 4);
    }
    r->last_arrival = arrival;
    r->last_timestamp = ts;
}

/* FastOpusForwarder._forward then _send, for one decrypted packet. Returns the length of
 * the protected packet written to ``out`` (0: nothing to send), or -1 on a Python error. */
static int forward_plain(Loop *self, Route *r, uint8_t *p, int n, double now, double wall,
                         uint8_t *out) {
    if (n < 12) { /* libsrtp checks the header; this keeps the reads below in bounds */
        r->dropped_invalid++;
        return mark(self, r, 1) < 0 ? -1 : 0;
    }
    unsigned int b0 = p[0];
    unsigned int seq = be16(p + 2), ts = be32(p + 4), ssrc = be32(p + 8);
    size_t offset = 12 + ((size_t)(b0 & 0x0F) << 2);
    int level = -1;
    if (b0 & 0x10) {
        if ((size_t)n < offset + 4) {
            r->dropped_invalid++;
            return mark(self, r, 1) < 0 ? -1 : 0;
        }
        unsigned int profile = be16(p + offset), words = be16(p + offset + 2);
        size_t start = offset + 4;
        offset = start + ((size_t)words << 2);
        if (r->level_in >= 0 && profile == 0xBEDE && offset <= (size_t)n)
            level = find_level(p, start, offset, r->level_in);
    }
    long long end = (b0 & 0x20) ? (long long)n - p[n - 1] : (long long)n;
    if (end < (long long)offset) {
        r->dropped_invalid++;
        return mark(self, r, 1) < 0 ? -1 : 0;
    }
    if (ssrc != r->ssrc) {
        /* A new source: Python continues the timelines (FastOpusForwarder._switch_source)
         * and hands the route back. Until then every packet of the route goes there too,
         * so nothing overtakes this one. */
        r->paused = 1;
        punt_route(self, PUNT_PLAIN, r, p, (size_t)n);
        return 0;
    }
    size_t plen = (size_t)end - offset;
    int first = isnan(r->first_packet_at);
    r->packets_in++;
    r->bytes_in += plen;
    if (first)
        r->first_packet_at = now;
    r->last_packet_at = now;
    statistics_add(r, seq, ts, wall);
    unsigned int b1 = p[1];
    if (!(r->opus[(b1 & 0x7F) >> 3] & (1u << (b1 & 7)))) {
        r->dropped_other_codec++;
        return mark(self, r, 1) < 0 ? -1 : 0;
    }
    if (mark(self, r, first) < 0)
        return -1;
    if (plen == 0)
        return 0; /* padding only */
    const uint8_t *payload = p + offset;
    if (r->tap) {
        Punt *t = punt_add(self, PUNT_TAP, 0, plen);
        if (t != NULL) {
            t->route = r;
            t->seq = seq;
            t->ts = ts;
            t->ssrc = ssrc;
            t->marker = b1 > 127;
            t->arrival = now;
            memcpy(punt_data(t), payload, plen);
        }
    }
    /* _send: the rewrite. */
    unsigned int out_seq = (seq + r->seq_off) & 0xFFFF;
    unsigned int out_ts = (ts + r->ts_off) & 0xFFFFFFFFu;
    const uint8_t *ext = r->ext_plain;
    size_t ext_len = (size_t)r->ext_plain_len;
    int with_level = r->ext_level_len > 0 && level >= 0;
    if (with_level) {
        ext = r->ext_level;
        ext_len = (size_t)r->ext_level_len;
    }
    size_t total = 12 + ext_len + plen;
    if (total > SRTP_BUFFER - SRTP_MAX_TRAILER) {
        r->dropped_invalid++;
        return mark(self, r, 1) < 0 ? -1 : 0;
    }
    out[0] = ext_len ? 0x90 : 0x80;
    out[1] = (uint8_t)((b1 & 0x80) | (unsigned int)r->out_pt);
    put16(out + 2, out_seq);
    put32(out + 4, out_ts);
    put32(out + 8, r->out_ssrc);
    memcpy(out + 12, ext, ext_len);
    if (with_level)
        out[12 + r->level_at] = (uint8_t)level;
    memcpy(out + 12 + ext_len, payload, plen);
    int len = (int)total;
    int status = srtp_protect_fn(r->tx_ctx, out, &len);
    if (status != 0) {
        count_refused(r, status);
        return mark(self, r, 1) < 0 ? -1 : 0;
    }
    if (((out_seq - r->hi_seq) & 0xFFFF) < 0x8000) {
        r->hi_seq = out_seq;
        r->hi_ts = out_ts;
    }
    r->last_forward_at = now;
    r->packets_sent++;
    r->octets_sent += plen;
    r->forwarded++;
    r->forwarded_bytes += plen;
    /* NTP time of this packet: base + monotonic seconds * 2^32 (as the Python path). */
    r->sr_ntp = r->ntp_base + (unsigned long long)(now * 4294967296.0);
    r->sr_rtp_ts = out_ts;
    self->compiled_forwarded++;
    return len;
}

/* Send ``count`` prepared messages on ``fd``; whatever the socket does not take now goes
 * to Python (its transport queues it, or reports the error). */
static int send_batch(Loop *self, int fd, int count) {
    int sent = 0;
    if (fd < self->fd_cap && !self->held[fd]) {
        while (sent < count) {
            self->sendmmsg_calls++;
            int rc = sendmmsg(fd, self->smsgs + sent, (unsigned int)(count - sent), MSG_DONTWAIT);
            if (rc < 0) {
                if (errno == EINTR)
                    continue;
                break; /* EAGAIN, or an error the transport reports */
            }
            if (rc == 0)
                break;
            sent += rc;
        }
    }
    for (int i = sent; i < count; i++) {
        struct msghdr *h = &self->smsgs[i].msg_hdr;
        punt_datagram(self, PUNT_SEND, fd, h->msg_iov->iov_base, h->msg_iov->iov_len,
                      (const struct sockaddr_storage *)h->msg_name, h->msg_namelen);
    }
    /* Until Python has sent those (its transport clears this when its queue is empty:
     * MediaDatagramTransport.send_handed_over), later packets follow them there rather
     * than overtake them. */
    if (sent < count && fd < self->fd_cap)
        self->held[fd] = 1;
    return 0;
}

static int grow(char **buffer, Py_ssize_t *cap, Py_ssize_t need) {
    if (need <= *cap)
        return 0;
    Py_ssize_t cap2 = *cap ? *cap : 4096;
    while (cap2 < need)
        cap2 *= 2;
    char *grown = PyMem_RawRealloc(*buffer, (size_t)cap2); /* without the interpreter too */
    if (grown == NULL)
        return -1;
    *buffer = grown;
    *cap = cap2;
    return 0;
}

/* The kernel's receive time of message ``i`` (SO_TIMESTAMPNS), else ``fallback``. */
static double arrival_time(Loop *self, int i, double fallback) {
    if (!self->timestamps)
        return fallback;
    struct msghdr *h = &self->rmsgs[i].msg_hdr;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c != NULL; c = CMSG_NXTHDR(h, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS &&
            c->cmsg_len >= CMSG_LEN(sizeof(struct timespec))) {
            struct timespec t;
            memcpy(&t, CMSG_DATA(c), sizeof(t));
            return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
        }
    }
    return fallback;
}

/* A sink's batch: every authentic RTP packet recorded, the rest to Python as usual. */
static int sink_batch(Loop *self, Route *r, int fd, int got) {
    double wall = realtime_s();
    for (int i = 0; i < got; i++) {
        uint8_t *d = (uint8_t *)self->riov[i].iov_base;
        size_t n = self->rmsgs[i].msg_len;
        if (!is_rtp(d, n)) {
            punt_datagram(self, PUNT_RAW, fd, (const char *)d, n, &self->raddr[i],
                          self->rmsgs[i].msg_hdr.msg_namelen);
            continue;
        }
        int len = (int)n;
        int status = n > SRTP_BUFFER ? -1 : srtp_unprotect_fn(r->rx_ctx, d, &len);
        if (status != 0 || len < 12) {
            count_refused(r, status);
            continue;
        }
        size_t offset = 12 + ((size_t)(d[0] & 0x0F) << 2);
        if ((d[0] & 0x10) && (size_t)len >= offset + 4)
            offset += 4 + ((size_t)be16(d + offset + 2) << 2);
        long long end = (d[0] & 0x20) ? (long long)len - d[len - 1] : (long long)len;
        if (end < (long long)offset || end - (long long)offset > 0xFFFF) {
            r->dropped_invalid++;
            continue;
        }
        size_t plen = (size_t)end - offset;
        if (grow(&r->records, &r->records_cap, r->records_len + RECORD_SIZE) < 0)
            return -1;
        char *rec = r->records + r->records_len;
        double at = arrival_time(self, i, wall);
        uint32_t ts = be32(d + 4), ssrc = be32(d + 8);
        uint16_t seq = (uint16_t)be16(d + 2), size = (uint16_t)plen;
        memcpy(rec, &at, 8);
        memcpy(rec + 8, &ts, 4);
        memcpy(rec + 12, &ssrc, 4);
        memcpy(rec + 16, &seq, 2);
        memcpy(rec + 18, &size, 2);
        r->records_len += RECORD_SIZE;
        if (r->keep_payloads) {
            if (grow(&r->payloads, &r->payloads_cap, r->payloads_len + (Py_ssize_t)plen) < 0)
                return -1;
            memcpy(r->payloads + r->payloads_len, d + offset, plen);
            r->payloads_len += (Py_ssize_t)plen;
        }
        r->packets_in++;
        r->bytes_in += plen;
        r->ssrc = ssrc;
    }
    return got;
}

/* ------------------------------------------------------------------ incoming SRTCP */

/* aiortc's rtp.is_rtcp, within RFC 7983's RTP/RTCP range (first byte 128..191). */
static inline int is_rtcp(const uint8_t *d, size_t n) {
    return n >= 2 && d[0] > 127 && d[0] < 192 && d[1] > 191 && d[1] < 209;
}

/* aiortc's RtcpSdesPacket.parse, for its verdict only (nothing of SDES is kept). */
static int sdes_valid(const uint8_t *d, long len, int count) {
    long pos = 0;
    for (int c = 0; c < count; c++) {
        if (len < pos + 4)
            return 0;
        pos += 4;
        while (pos < len - 1) {
            unsigned int type = d[pos], length = d[pos + 1];
            pos += 2;
            if (len < pos + (long)length)
                return 0;
            pos += length;
            if (type == 0)
                break;
        }
    }
    return 1;
}

static void read_block(RtcpEvent *e, unsigned int reporter, double wall, const uint8_t *b) {
    e->kind = RTCP_EVENT_BLOCK;
    e->ssrc = reporter;
    e->arrival = wall;
    e->block_ssrc = be32(b);
    e->fraction = b[4];
    /* aiortc's unpack_packets_lost: 24 bits, two's complement. */
    unsigned int lost = ((unsigned int)b[5] << 16) | ((unsigned int)b[6] << 8) | b[7];
    e->lost = (lost & 0x800000u) ? (int)lost - 0x1000000 : (int)lost;
    e->highest = be32(b + 8);
    e->jitter = be32(b + 12);
    e->lsr = be32(b + 16);
    e->dlsr = be32(b + 20);
}

#define RTCP_MALFORMED -1
#define RTCP_FOR_PYTHON 0
#define RTCP_KEPT 1

/* One decrypted compound of ``r``'s far end, checked as aiortc's RtcpPacket.parse checks
 * it (aiortc drops the whole compound on any error, so does this). Only compounds made of
 * SR, RR and SDES (and types aiortc's parser skips: APP, XR, unknown) are kept here: the
 * SR's sender info and every report block go on the route's queue with ``wall``, the rest
 * is nothing aiortc's handlers act on. Anything else (BYE, RTPFB, PSFB), or more report
 * events than the queue has room for, is for Python. Every read stays within ``n``. */
static int read_rtcp(Route *r, const uint8_t *d, long n, double wall) {
    int events = 0, for_python = 0;
    for (int pass = 0; pass < 2; pass++) {
        long pos = 0;
        while (pos < n) {
            if (n < pos + 4)
                return RTCP_MALFORMED;
            unsigned int first = d[pos], type = d[pos + 1];
            long end = pos + 4 + 4 * (long)be16(d + pos + 2);
            if ((first >> 6) != 2 || n < end)
                return RTCP_MALFORMED;
            const uint8_t *payload = d + pos + 4;
            long len = end - pos - 4;
            pos = end;
            if (first & 0x20) {
                if (len == 0 || payload[len - 1] == 0 || payload[len - 1] > len)
                    return RTCP_MALFORMED;
                len -= payload[len - 1];
            }
            int count = (int)(first & 0x1F);
            if (type == RTCP_SR) {
                if (len != 24 + 24 * (long)count)
                    return RTCP_MALFORMED;
                if (pass == 0) {
                    events += 1 + count;
                    continue;
                }
                unsigned int ssrc = be32(payload);
                RtcpEvent *e = &r->rtcp[r->rtcp_pending++];
                e->kind = RTCP_EVENT_SR;
                e->ssrc = ssrc;
                e->arrival = wall;
                e->ntp = ((unsigned long long)be32(payload + 4) << 32) | be32(payload + 8);
                e->rtp_ts = be32(payload + 12);
                e->packets = be32(payload + 16);
                e->octets = be32(payload + 20);
                for (int i = 0; i < count; i++)
                    read_block(&r->rtcp[r->rtcp_pending++], ssrc, wall, payload + 24 + 24 * i);
            } else if (type == RTCP_RR) {
                if (len != 4 + 24 * (long)count)
                    return RTCP_MALFORMED;
                if (pass == 0) {
                    events += count;
                    continue;
                }
                unsigned int ssrc = be32(payload);
                for (int i = 0; i < count; i++)
                    read_block(&r->rtcp[r->rtcp_pending++], ssrc, wall, payload + 4 + 24 * i);
            } else if (type == RTCP_SDES) {
                if (pass == 0 && !sdes_valid(payload, len, count))
                    return RTCP_MALFORMED;
            } else if (type == RTCP_BYE) {
                if (len < 4 * (long)count)
                    return RTCP_MALFORMED;
                for_python = 1;
            } else if (type == RTCP_RTPFB) {
                if (len < 8 || len % 4)
                    return RTCP_MALFORMED;
                for_python = 1;
            } else if (type == RTCP_PSFB) {
                if (len < 8)
                    return RTCP_MALFORMED;
                for_python = 1;
            }
            /* Other types: aiortc's parser skips them, and so does this. */
        }
        if (pass == 0 && (for_python || events > RTCP_PENDING - r->rtcp_pending))
            return RTCP_FOR_PYTHON;
    }
    return RTCP_KEPT;
}

/* One SRTCP datagram on ``r``'s socket (in the receive slot ``d``, ``n`` bytes). */
static int handle_rtcp(Loop *self, Route *r, uint8_t *d, size_t n, double wall) {
    int len = (int)n;
    /* The size limit of pylibsrtp's buffer, which aiortc's path unprotects in. */
    if (n > SRTP_BUFFER || srtp_unprotect_rtcp_fn(r->rx_ctx, d, &len) != 0) {
        r->rtcp_dropped++;
        self->rtcp_dropped++;
        return 0;
    }
    int verdict = read_rtcp(r, d, len, wall);
    if (verdict == RTCP_MALFORMED) {
        r->rtcp_dropped++;
        self->rtcp_dropped++;
        return 0;
    }
    if (verdict == RTCP_FOR_PYTHON) {
        r->rtcp_to_python++;
        self->rtcp_to_python++;
        punt_route(self, PUNT_RTCP_PLAIN, r, d, (size_t)len);
        return 0;
    }
    r->rtcp_read++;
    self->rtcp_read++;
    /* Not a reason to sync on its own: the reports go to Python with the route's counters
     * (every second while packets flow), before the relay's own report on the leg and
     * whenever the statistics are read (each with its arrival time, so the delay changes
     * nothing); so a leg with no audio costs no Python per compound. Once half the queue
     * is used, it is synced at the end of this pump. */
    if (r->rtcp_pending >= RTCP_PENDING / 2)
        return mark(self, r, 1);
    return 0;
}

/* Read what is waiting on ``fd`` (one recvmmsg) and handle it. Returns the datagrams read
 * or -1 on a Python error. */
static int read_socket(Loop *self, int fd) {
    for (int i = 0; i < VLEN; i++) {
        struct msghdr *h = &self->rmsgs[i].msg_hdr;
        memset(h, 0, sizeof(*h));
        h->msg_name = &self->raddr[i];
        h->msg_namelen = sizeof(self->raddr[i]);
        h->msg_iov = &self->riov[i];
        h->msg_iovlen = 1;
        if (self->timestamps) {
            h->msg_control = self->control[i].buf;
            h->msg_controllen = sizeof(self->control[i].buf);
        }
    }
    self->recvmmsg_calls++;
    int got = recvmmsg(fd, self->rmsgs, VLEN, MSG_DONTWAIT, NULL);
    if (got < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return 0;
        /* An ICMP error reported on the socket: the socket itself is fine. */
        punt_error(self, fd, errno);
        return 0;
    }
    Route *r = fd < self->fd_cap ? self->by_fd[fd] : NULL;
    if (r != NULL && r->kind == KIND_SINK)
        return sink_batch(self, r, fd, got);
    double now = 0.0, wall = 0.0;
    if (r != NULL) {
        now = monotonic_s();
        wall = realtime_s();
    }
    int nsend = 0;
    for (int i = 0; i < got; i++) {
        uint8_t *d = (uint8_t *)self->riov[i].iov_base;
        size_t n = self->rmsgs[i].msg_len;
        if (r != NULL && is_rtcp(d, n) && srtp_unprotect_rtcp_fn != NULL) {
            if (handle_rtcp(self, r, d, n, wall) < 0)
                return -1;
            continue;
        }
        if (r == NULL || !is_rtp(d, n)) {
            punt_datagram(self, PUNT_RAW, fd, (const char *)d, n, &self->raddr[i],
                          self->rmsgs[i].msg_hdr.msg_namelen);
            continue;
        }
        int len = (int)n;
        /* Larger than the Python path's buffer: refused, as there. */
        int status = n > SRTP_BUFFER ? -1 : srtp_unprotect_fn(r->rx_ctx, d, &len);
        if (status != 0) {
            count_refused(r, status);
            if (mark(self, r, 1) < 0)
                return -1;
            continue;
        }
        if (r->paused || r->out_fd < 0) {
            punt_route(self, PUNT_PLAIN, r, d, (size_t)len);
            continue;
        }
        uint8_t *out = (uint8_t *)self->siov[nsend].iov_base;
        int size = forward_plain(self, r, d, len, now, wall, out);
        if (size < 0)
            return -1;
        if (size == 0)
            continue;
        struct msghdr *h = &self->smsgs[nsend].msg_hdr;
        memset(h, 0, sizeof(*h));
        h->msg_name = &r->out_addr;
        h->msg_namelen = r->out_addrlen;
        h->msg_iov = &self->siov[nsend];
        h->msg_iovlen = 1;
        self->siov[nsend].iov_len = (size_t)size;
        nsend++;
    }
    /* Every packet of one socket goes to its route's one out socket. */
    if (nsend > 0 && send_batch(self, r->out_fd, nsend) < 0)
        return -1;
    return got;
}

/* Up to ``rounds`` rounds of "poll the set, read every ready socket"; the datagrams read.
 * Under the media lock. ``*error``: the errno that stopped it (the set is gone), else 0. */
static long long read_rounds(Loop *self, int epfd, int rounds, int *error) {
    long long count = 0;
    *error = 0;
    for (int round = 0; round < rounds; round++) {
        int ready = epoll_wait(epfd, self->events, MAX_EVENTS, 0);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            *error = errno;
            break;
        }
        if (ready == 0)
            break;
        for (int i = 0; i < ready; i++) {
            int got = read_socket(self, self->events[i].data.fd);
            if (got < 0)
                self->out_of_memory = 1; /* a sink's records; the pump raises it */
            else
                count += got;
        }
    }
    self->datagrams += (unsigned long long)count;
    return count;
}

/* Routes whose counters are due in Python: at once after something rare (a first packet,
 * a drop), else every sync_interval while packets flow, ``most`` at most (SYNCS_PER_PUMP
 * after a read; every due one when the forwarder wakes for them alone). Under the media
 * lock. */
static void queue_syncs(Loop *self, int most) {
    if (self->n_dirty == 0)
        return;
    double now = monotonic_s();
    int synced = 0;
    for (Py_ssize_t i = 0; i < self->n_dirty;) {
        Route *r = self->dirty[i];
        if (r->urgent || (synced < most && route_due(r, now, self->sync_interval))) {
            synced += !r->urgent;
            mark_synced(self, r, now); /* the next one is at i now */
            punt_route(self, PUNT_SYNC, r, NULL, 0);
        } else {
            i++;
        }
    }
}

static PyObject *loop_pump(Loop *self, PyObject *args) {
    int epfd, max_rounds;
    if (!PyArg_ParseTuple(args, "ii", &epfd, &max_rounds))
        return NULL;
    if (srtp_protect_fn == NULL || srtp_unprotect_fn == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "set_srtp() was not called");
        return NULL;
    }
    if (self->rbuf == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Loop not initialised");
        return NULL;
    }
    if (self->forwarding) {
        PyErr_SetString(PyExc_RuntimeError, "the loop's forwarder reads its sockets");
        return NULL;
    }
    if (self->converting) {
        PyErr_SetString(PyExc_RuntimeError, "pump is not reentrant");
        return NULL;
    }
    lock_media();
    self->pumps++;
    int error;
    long long count = read_rounds(self, epfd, max_rounds, &error);
    queue_syncs(self, SYNCS_PER_PUMP);
    int out_of_memory = self->out_of_memory;
    self->out_of_memory = 0;
    Taken taken = take_queue(self);
    unlock_media();
    PyObject *punts = finish_take(self, &taken);
    if (punts != NULL && (error || out_of_memory)) {
        Py_DECREF(punts);
        punts = NULL;
        if (error) {
            errno = error;
            PyErr_SetFromErrno(PyExc_OSError);
        } else {
            PyErr_NoMemory();
        }
    }
    if (punts == NULL)
        return NULL;
    return Py_BuildValue("(LN)", count, punts);
}

/* ------------------------------------------------------------------ the forwarder */

/* The media lock for the forwarder: it gives up waiting when asked to stop (the thread
 * stopping it may hold the lock). 0: stop. */
static int forwarder_lock(Loop *self) {
    for (;;) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += 5000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_nsec -= 1000000000L;
            until.tv_sec++;
        }
        int rc = pthread_mutex_timedlock(&media_lock, &until);
        if (rc == 0)
            return 1;
        if (__atomic_load_n(&self->forwarder_stop, __ATOMIC_ACQUIRE))
            return 0;
    }
}

/* Make an eventfd readable. A failed write (EAGAIN) means its counter is at its maximum:
 * it is readable already. */
static void signal_eventfd(int fd) {
    uint64_t one = 1;
    if (write(fd, &one, sizeof(one)) < 0) {
    }
}

/* From SCHED_FIFO to the default policy, then nice -10 where the process may (what a
 * raised thread gets at start when real-time is refused). On the forwarder's own thread. */
static void leave_real_time(Loop *self) {
    struct sched_param param = {.sched_priority = 0};
    if (pthread_setschedparam(pthread_self(), SCHED_OTHER, &param) != 0)
        return;
    int niced = setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), -10) == 0;
    __atomic_store_n(&self->forward_priority, niced, __ATOMIC_RELEASE);
}

static void sleep_until(double at) {
    struct timespec t;
    double whole = floor(at);
    t.tv_sec = (time_t)whole;
    t.tv_nsec = (long)((at - whole) * 1e9);
    if (t.tv_nsec >= 1000000000L)
        t.tv_nsec = 999999999L;
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL) == EINTR)
        ;
}

/* The forwarder's thread. Quiet, it waits for any socket (or stop_fd); woken, it reads
 * every ready socket; once two wake-ups come closer than the batching window it polls
 * every window instead, from each poll's start, until a poll finds nothing (as
 * relay.media.udp.MediaSockets does on the event loop). Between two polls it sleeps at
 * least a quarter of the window: raised above the event loop's thread, a forwarder that
 * could not keep up must still leave it the core. */
static void *forwarder_main(void *arg) {
    Loop *self = (Loop *)arg;
    if (self->forward_nice && setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), -10) == 0)
        __atomic_store_n(&self->forward_priority, 1, __ATOMIC_RELEASE);
    double last_wake = -1e9, next = 0.0;
    int busy = 0;
    struct epoll_event woken[2];
    int dirty = 0;
    while (!__atomic_load_n(&self->forwarder_stop, __ATOMIC_ACQUIRE)) {
        int timed_out = 0;
        if (busy) {
            sleep_until(next);
        } else {
            /* Routes with counters Python has not seen, and no packet to wake for: they are
             * synced when half a sync interval has passed without one (the flush timer's
             * job on the event loop's thread, fastloop.sync_due). */
            int timeout = dirty ? (int)(self->sync_interval * 500.0) + 1 : -1;
            int n = epoll_wait(self->wait_fd, woken, 2, timeout);
            if (n < 0 && errno != EINTR) {
                __atomic_store_n(&self->forward_error, errno, __ATOMIC_RELEASE);
                break;
            }
            timed_out = n == 0;
        }
        if (__atomic_load_n(&self->forwarder_stop, __ATOMIC_ACQUIRE))
            break;
        if (__atomic_exchange_n(&self->forward_demote, 0, __ATOMIC_ACQ_REL))
            leave_real_time(self);
        double started = monotonic_s();
        if (!forwarder_lock(self))
            break;
        size_t queued_before = self->queue_len;
        int error;
        long long count = read_rounds(self, self->forward_epfd, self->forward_rounds, &error);
        /* A poll counts whatever it found; a wake-up only when it read a datagram (it may
         * wake for an ICMP error alone, or for readiness gone by the time it reads). */
        if (busy)
            self->polls++;
        else if (!timed_out && count > 0)
            self->wakeups++;
        queue_syncs(self, timed_out ? INT_MAX : SYNCS_PER_PUMP);
        dirty = self->n_dirty > 0;
        int wake_python = queued_before == 0 && self->queue_len > 0;
        unlock_media();
        if (wake_python)
            signal_eventfd(self->notify_fd);
        if (error) {
            /* the set was closed under it */
            __atomic_store_n(&self->forward_error, error, __ATOMIC_RELEASE);
            break;
        }
        double now = monotonic_s();
        double batch = (double)__atomic_load_n(&self->forward_batch_ns, __ATOMIC_RELAXED) * 1e-9;
        if (timed_out) {
            /* nothing arrived: still quiet */
        } else if (!busy) {
            busy = batch > 0.0 && started - last_wake < batch;
            last_wake = now;
        } else if (count == 0) {
            busy = 0;
            last_wake = now;
        }
        if (busy) {
            next = started + batch;
            if (next < now + batch / 4)
                next = now + batch / 4;
        }
        __atomic_store_n(&self->forward_busy, busy, __ATOMIC_RELAXED);
    }
    __atomic_store_n(&self->forward_busy, 0, __ATOMIC_RELAXED);
    if (__atomic_load_n(&self->forward_error, __ATOMIC_ACQUIRE)) {
        /* Python must know (forward_error): wake it, whatever the queue holds. */
        signal_eventfd(self->notify_fd);
    }
    return NULL;
}

static PyObject *loop_start_forwarding(Loop *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"epoll_fd", "batch", "max_rounds", "raised", NULL};
    int epfd, max_rounds, raised = 0;
    double batch;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "idi|p", kwlist, &epfd, &batch, &max_rounds,
                                     &raised))
        return NULL;
    if (!(batch >= 0.0 && batch <= 0.01) || max_rounds < 1) {
        PyErr_SetString(PyExc_ValueError, "batch must be 0..0.01 s, max_rounds at least 1");
        return NULL;
    }
    if (srtp_protect_fn == NULL || srtp_unprotect_fn == NULL || self->rbuf == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "set_srtp() was not called, or no buffers");
        return NULL;
    }
    if (self->forwarding) {
        PyErr_SetString(PyExc_RuntimeError, "the forwarder is running");
        return NULL;
    }
    if (self->n_sources > 0) {
        /* Sources send from the buffers the forwarder sends from (tick, add_source). */
        PyErr_SetString(PyExc_RuntimeError, "a loop with sources cannot forward on a thread");
        return NULL;
    }
    if (self->notify_fd < 0) {
        self->notify_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (self->notify_fd < 0)
            return PyErr_SetFromErrno(PyExc_OSError);
    }
    self->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    self->wait_fd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event on_set = {.events = EPOLLIN, .data.fd = epfd};
    struct epoll_event on_stop = {.events = EPOLLIN, .data.fd = self->stop_fd};
    if (self->stop_fd < 0 || self->wait_fd < 0 ||
        epoll_ctl(self->wait_fd, EPOLL_CTL_ADD, epfd, &on_set) < 0 ||
        epoll_ctl(self->wait_fd, EPOLL_CTL_ADD, self->stop_fd, &on_stop) < 0)
        goto os_error;
    self->forward_epfd = epfd;
    self->forward_rounds = max_rounds;
    __atomic_store_n(&self->forward_batch_ns, (long long)(batch * 1e9), __ATOMIC_RELAXED);
    self->forward_error = 0;
    __atomic_store_n(&self->forwarder_stop, 0, __ATOMIC_RELEASE);
    /* Signals are the interpreter's thread's: the forwarder starts with all of them blocked. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    /* raised: ahead of the process's other threads when both want the core, as browsers
     * run their audio threads. Real-time (SCHED_FIFO, its lowest priority) from its start
     * where the process may (root, CAP_SYS_NICE, or RLIMIT_RTPRIO of 1 or more), else the
     * thread lowers its nice value, else it runs as the process does. */
    int rc = EPERM;
    __atomic_store_n(&self->forward_priority, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&self->forward_demote, 0, __ATOMIC_RELEASE);
    self->forward_nice = 0; /* read by the thread as it starts: set before each create */
    /* Real-time only with a batching window: without one the thread wakes for every
     * datagram and has no sleep between polls to leave the core to others, so a flood
     * could hold a core against the event loop. */
    if (raised && batch > 0.0) {
        pthread_attr_t attr;
        struct sched_param param = {.sched_priority = 1};
        pthread_attr_init(&attr);
        if (pthread_attr_setinheritsched(&attr, PTHREAD_EXPLICIT_SCHED) == 0 &&
            pthread_attr_setschedpolicy(&attr, SCHED_FIFO) == 0 &&
            pthread_attr_setschedparam(&attr, &param) == 0)
            rc = pthread_create(&self->forwarder, &attr, forwarder_main, self);
        pthread_attr_destroy(&attr);
        if (rc == 0)
            __atomic_store_n(&self->forward_priority, 2, __ATOMIC_RELEASE);
    }
    if (rc != 0) {
        self->forward_nice = raised;
        rc = pthread_create(&self->forwarder, NULL, forwarder_main, self);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        errno = rc;
        goto os_error;
    }
    /* Named for the operator's tools (top -H, ps -L, perf --sort comm); 15 characters at
     * most, and a failure only leaves the process's name. */
    pthread_setname_np(self->forwarder, "relay-forward");
    lock_media();
    self->forwarding = 1;
    unlock_media();
    Py_RETURN_NONE;
os_error:
    PyErr_SetFromErrno(PyExc_OSError);
    if (self->stop_fd >= 0)
        close(self->stop_fd);
    if (self->wait_fd >= 0)
        close(self->wait_fd);
    self->stop_fd = self->wait_fd = -1;
    return NULL;
}

/* Waits for the forwarder's current round at most: it never waits for the interpreter, and
 * gives up waiting for the media lock once asked to stop, so joining it with either held
 * cannot deadlock. The punts it queued stay for take_punts. */
static void stop_forwarder(Loop *self) {
    if (!self->forwarding)
        return;
    __atomic_store_n(&self->forwarder_stop, 1, __ATOMIC_RELEASE);
    signal_eventfd(self->stop_fd);
    pthread_join(self->forwarder, NULL);
    close(self->stop_fd);
    close(self->wait_fd);
    self->stop_fd = self->wait_fd = -1;
    lock_media();
    self->forwarding = 0;
    unlock_media();
}

static PyObject *loop_stop_forwarding(Loop *self, PyObject *unused) {
    stop_forwarder(self);
    Py_RETURN_NONE;
}

static PyObject *loop_set_batch(Loop *self, PyObject *arg) {
    double batch = PyFloat_AsDouble(arg);
    if (batch == -1.0 && PyErr_Occurred())
        return NULL;
    if (!(batch >= 0.0 && batch <= 0.01)) {
        PyErr_SetString(PyExc_ValueError, "batch must be 0..0.01 s");
        return NULL;
    }
    __atomic_store_n(&self->forward_batch_ns, (long long)(batch * 1e9), __ATOMIC_RELAXED);
    /* No window, no real-time, as at start: without one the thread never sleeps between
     * polls, and a flood could hold a core against the event loop. The thread itself leaves
     * it when it next wakes, which is before it reads anything more (acting on it from here
     * would race with a thread exiting on an error, whose id may be reused). */
    if (batch == 0.0 && self->forwarding &&
        __atomic_load_n(&self->forward_priority, __ATOMIC_ACQUIRE) == 2)
        __atomic_store_n(&self->forward_demote, 1, __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

/* Everything the forwarder queued for Python since the last call, as pump's punts (None:
 * nothing); notify_fd is not ready after. */
static PyObject *loop_take_punts(Loop *self, PyObject *unused) {
    if (self->converting) {
        PyErr_SetString(PyExc_RuntimeError, "take_punts is not reentrant");
        return NULL;
    }
    if (self->notify_fd >= 0) {
        uint64_t count;
        while (read(self->notify_fd, &count, sizeof(count)) < 0 && errno == EINTR)
            ;
    }
    lock_media();
    Taken taken = take_queue(self);
    unlock_media();
    return finish_take(self, &taken);
}

static PyObject *loop_add_source(Loop *self, PyObject *arg) {
    if (!PyObject_TypeCheck(arg, &SourceType)) {
        PyErr_SetString(PyExc_TypeError, "a Source");
        return NULL;
    }
    if (((Source *)arg)->payloads == NULL) {
        PyErr_SetString(PyExc_ValueError, "the source is not initialised");
        return NULL;
    }
    if (self->rbuf == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Loop not initialised");
        return NULL;
    }
    if (self->forwarding) {
        PyErr_SetString(PyExc_RuntimeError, "a forwarding loop cannot send sources");
        return NULL;
    }
    pthread_mutex_lock(&self->sources_lock);
    if (self->n_sources == self->sources_cap) {
        Py_ssize_t cap = self->sources_cap ? self->sources_cap * 2 : 64;
        PyObject **sources = PyMem_Realloc(self->sources, (size_t)cap * sizeof(PyObject *));
        if (sources == NULL) {
            pthread_mutex_unlock(&self->sources_lock);
            return PyErr_NoMemory();
        }
        self->sources = sources;
        self->sources_cap = cap;
    }
    Source *src = (Source *)Py_NewRef(arg);
    self->sources[self->n_sources++] = (PyObject *)src;
    /* With the ticker running, the source's first due frames go out here, on the
     * interpreter's thread: libsrtp adds the new SSRC's stream to its session's list on
     * the first protect, and the session's own RTCP (aiortc's, protected on this thread)
     * walks that list. From then on the ticker only protects in a stream that exists. */
    int failed = self->ticker_running && send_due(src, self->smsgs, self->siov) < 0;
    pthread_mutex_unlock(&self->sources_lock);
    if (failed)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *loop_remove_source(Loop *self, PyObject *arg) {
    int found = 0;
    if (self->rbuf != NULL)
        pthread_mutex_lock(&self->sources_lock);
    for (Py_ssize_t i = 0; i < self->n_sources; i++) {
        if (self->sources[i] == arg) {
            self->sources[i] = self->sources[--self->n_sources];
            found = 1;
            break;
        }
    }
    if (self->rbuf != NULL)
        pthread_mutex_unlock(&self->sources_lock);
    if (!found)
        Py_RETURN_FALSE;
    Py_DECREF(arg); /* out of the ticker's reach now */
    Py_RETURN_TRUE;
}

/* Source ``src``'s frames that are due by now (at most 8 per call), protected and sent
 * with ``msgs``/``iov`` (VLEN of each, SEND_STRIDE bytes behind each iov_base). Touches no
 * Python object's reference count and allocates with the raw allocator: the ticker thread
 * calls it without the interpreter (the payloads tuple and its bytes are immutable and
 * kept alive by the source, which the loop holds). The sent count, or -1 if the send
 * times could not grow. */
static int send_due(Source *src, struct mmsghdr *msgs, struct iovec *iov) {
    double now = monotonic_s();
    int count = 0;
    long long queued[8];
    while (count < 8 && src->start + (double)src->next * src->period <= now) {
        long long n = src->next;
        PyObject *payload = PyTuple_GET_ITEM(src->payloads, n % PyTuple_GET_SIZE(src->payloads));
        Py_ssize_t plen = PyBytes_GET_SIZE(payload);
        uint8_t *out = (uint8_t *)iov[count].iov_base;
        out[0] = src->ext_len ? 0x90 : 0x80;
        out[1] = (uint8_t)(0x80 | (unsigned int)src->pt); /* marker on every packet, as aiortc */
        put16(out + 2, (src->seq0 + (unsigned int)n) & 0xFFFF);
        put32(out + 4, src->ts0 + (unsigned int)n * src->frame_ticks);
        put32(out + 8, src->ssrc);
        memcpy(out + 12, src->ext, (size_t)src->ext_len);
        memcpy(out + 12 + src->ext_len, PyBytes_AS_STRING(payload), (size_t)plen);
        int len = (int)(12 + src->ext_len + plen);
        if ((n + 1) * (long long)sizeof(double) > (long long)src->sent_cap) {
            Py_ssize_t cap = src->sent_cap ? src->sent_cap * 2 : 4096 * (Py_ssize_t)sizeof(double);
            while ((n + 1) * (long long)sizeof(double) > (long long)cap)
                cap *= 2;
            double *grown = PyMem_RawRealloc(src->sent, (size_t)cap);
            if (grown == NULL)
                return -1;
            src->sent = grown;
            src->sent_cap = cap;
        }
        src->sent[n] = NAN;
        src->next++;
        if (srtp_protect_fn(src->tx_ctx, out, &len) != 0) {
            src->send_errors++;
            continue;
        }
        struct msghdr *h = &msgs[count].msg_hdr;
        memset(h, 0, sizeof(*h));
        h->msg_name = &src->addr;
        h->msg_namelen = src->addrlen;
        h->msg_iov = &iov[count];
        h->msg_iovlen = 1;
        iov[count].iov_len = (size_t)len;
        queued[count++] = n;
    }
    if (count == 0)
        return 0;
    double wall = realtime_s();
    int sent = sendmmsg(src->fd, msgs, (unsigned int)count, MSG_DONTWAIT);
    if (sent < 0)
        sent = 0;
    for (int i = 0; i < sent; i++)
        src->sent[queued[i]] = wall;
    src->sent_packets += (unsigned long long)sent;
    src->send_errors += (unsigned long long)(count - sent);
    return sent;
}

/* Every source's due frames; -1 if send times could not grow. Under sources_lock. */
static long long send_all_due(Loop *self, struct mmsghdr *msgs, struct iovec *iov) {
    long long total = 0;
    for (Py_ssize_t k = 0; k < self->n_sources; k++) {
        int sent = send_due((Source *)self->sources[k], msgs, iov);
        if (sent < 0)
            return -1;
        total += sent;
    }
    return total;
}

/* Every frame of every source that is due by now (at most 8 per source per call). */
static PyObject *loop_tick(Loop *self, PyObject *unused) {
    if (srtp_protect_fn == NULL || self->sbuf == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "set_srtp() was not called, or no buffers");
        return NULL;
    }
    pthread_mutex_lock(&self->sources_lock);
    long long total = send_all_due(self, self->smsgs, self->siov);
    pthread_mutex_unlock(&self->sources_lock);
    if (total < 0)
        return PyErr_NoMemory();
    return PyLong_FromLongLong(total);
}

/* ------------------------------------------------------------------ the sources' ticker */

static void *ticker_main(void *arg) {
    Loop *self = (Loop *)arg;
    if (self->ticker_raised) {
        /* Ahead of the process's other threads when both want the core, as browsers run
         * their audio threads: real-time (SCHED_FIFO, the lowest priority) where the
         * process may, else a lower nice value, else as it is. Each tick sleeps until the
         * next period, so it never holds the core for long. */
        struct sched_param param = {.sched_priority = 1};
        if (pthread_setschedparam(pthread_self(), SCHED_FIFO, &param) != 0)
            (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), -10);
    }
    long period_ns = (long)(self->ticker_period * 1e9);
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    while (!__atomic_load_n(&self->ticker_stop, __ATOMIC_ACQUIRE)) {
        next.tv_nsec += period_ns;
        while (next.tv_nsec >= 1000000000L) {
            next.tv_nsec -= 1000000000L;
            next.tv_sec++;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL); /* EINTR: tick early */
        pthread_mutex_lock(&self->sources_lock);
        /* A failed growth counts as refused sends of the frames left for the next tick. */
        send_all_due(self, self->tmsgs, self->tiov);
        pthread_mutex_unlock(&self->sources_lock);
        /* Behind (the machine was busy): the next tick a period from now, not a run of
         * catch-up ticks (each tick sends everything due anyway). */
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec > next.tv_sec || (now.tv_sec == next.tv_sec && now.tv_nsec > next.tv_nsec))
            next = now;
    }
    return NULL;
}

static PyObject *loop_start_ticker(Loop *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"period", "raised", NULL};
    double period;
    int raised = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "d|p", kwlist, &period, &raised))
        return NULL;
    if (!(period >= 0.0001 && period <= 1.0)) {
        PyErr_SetString(PyExc_ValueError, "period must be 0.0001..1 s");
        return NULL;
    }
    if (srtp_protect_fn == NULL || self->rbuf == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "set_srtp() was not called, or no buffers");
        return NULL;
    }
    if (self->ticker_running) {
        PyErr_SetString(PyExc_RuntimeError, "the ticker is running");
        return NULL;
    }
    self->tbuf = PyMem_RawMalloc((size_t)VLEN * SEND_STRIDE);
    if (self->tbuf == NULL)
        return PyErr_NoMemory();
    for (int i = 0; i < VLEN; i++)
        self->tiov[i].iov_base = self->tbuf + (size_t)i * SEND_STRIDE;
    self->ticker_period = period;
    self->ticker_raised = raised;
    __atomic_store_n(&self->ticker_stop, 0, __ATOMIC_RELEASE);
    /* Signals are the interpreter's thread's: the ticker starts with all of them blocked. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&self->ticker, NULL, ticker_main, self);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        PyMem_RawFree(self->tbuf);
        self->tbuf = NULL;
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    self->ticker_running = 1;
    Py_RETURN_NONE;
}

/* Waits for the ticker's current tick at most (it never waits for the interpreter, so
 * joining it with the interpreter held cannot deadlock). */
static void stop_ticker(Loop *self) {
    if (!self->ticker_running)
        return;
    __atomic_store_n(&self->ticker_stop, 1, __ATOMIC_RELEASE);
    pthread_join(self->ticker, NULL);
    self->ticker_running = 0;
    PyMem_RawFree(self->tbuf);
    self->tbuf = NULL;
}

static PyObject *loop_stop_ticker(Loop *self, PyObject *unused) {
    stop_ticker(self);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ the poll timer */

static int tick_ready(Loop *self) {
    if (self->rbuf == NULL || self->tick_fd < 0) {
        PyErr_SetString(PyExc_RuntimeError, "Loop not initialised");
        return -1;
    }
    return 0;
}

/* Fire tick_fd at ``at`` (seconds on CLOCK_MONOTONIC, time.monotonic()'s clock); a time
 * already past fires it at once. Replaces any earlier arming. */
static PyObject *loop_arm_tick(Loop *self, PyObject *arg) {
    double at = PyFloat_AsDouble(arg);
    if (at == -1.0 && PyErr_Occurred())
        return NULL;
    if (tick_ready(self) < 0)
        return NULL;
    if (!(at > 0.0 && at < 1e15)) {
        PyErr_SetString(PyExc_ValueError, "arm_tick needs a time on the monotonic clock");
        return NULL;
    }
    struct itimerspec spec;
    memset(&spec, 0, sizeof(spec));
    double whole = floor(at);
    spec.it_value.tv_sec = (time_t)whole;
    spec.it_value.tv_nsec = (long)((at - whole) * 1e9);
    if (spec.it_value.tv_nsec >= 1000000000L)
        spec.it_value.tv_nsec = 999999999L;
    if (spec.it_value.tv_sec == 0 && spec.it_value.tv_nsec == 0)
        spec.it_value.tv_nsec = 1; /* all zero would disarm it */
    if (timerfd_settime(self->tick_fd, TFD_TIMER_ABSTIME, &spec, NULL) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

/* Stop tick_fd; an expiry not yet read is forgotten too (timerfd_settime resets it). */
static PyObject *loop_disarm_tick(Loop *self, PyObject *unused) {
    if (tick_ready(self) < 0)
        return NULL;
    struct itimerspec spec;
    memset(&spec, 0, sizeof(spec));
    if (timerfd_settime(self->tick_fd, 0, &spec, NULL) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

/* Read tick_fd's expiries (0 if none), so that it is no longer ready. */
static PyObject *loop_clear_tick(Loop *self, PyObject *unused) {
    if (tick_ready(self) < 0)
        return NULL;
    uint64_t expiries = 0;
    for (;;) {
        ssize_t got = read(self->tick_fd, &expiries, sizeof(expiries));
        if (got == (ssize_t)sizeof(expiries))
            return PyLong_FromUnsignedLongLong(expiries);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return PyLong_FromLong(0);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
}

static PyObject *loop_stats(Loop *self, PyObject *unused) {
    lock_media();
    PyObject *out = Py_BuildValue(
        "{sKsKsKsKsKsnsnsKsKsKsKsKsKsisisisi}", "datagrams", self->datagrams, "forwarded",
        self->compiled_forwarded, "pumps", self->pumps, "recvmmsg", self->recvmmsg_calls,
        "sendmmsg", self->sendmmsg_calls, "routes", self->n_routes, "dirty", self->n_dirty,
        "rtcp_read", self->rtcp_read, "rtcp_to_python", self->rtcp_to_python, "rtcp_dropped",
        self->rtcp_dropped, "wakeups", self->wakeups, "polls", self->polls, "punts_dropped",
        self->punts_dropped, "forwarding", self->forwarding, "priority",
        __atomic_load_n(&self->forward_priority, __ATOMIC_ACQUIRE), "forward_error",
        self->forward_error, "busy", __atomic_load_n(&self->forward_busy, __ATOMIC_RELAXED));
    unlock_media();
    return out;
}

static PyObject *loop_routes(Loop *self, PyObject *unused) {
    lock_media();
    PyObject *out = PyList_New(self->n_routes);
    if (out != NULL) {
        for (Py_ssize_t i = 0; i < self->n_routes; i++)
            PyList_SET_ITEM(out, i, Py_NewRef((PyObject *)self->routes[i]));
    }
    unlock_media();
    return out;
}

static PyObject *loop_close(Loop *self, PyObject *unused) {
    stop_forwarder(self);
    loop_drop_routes(self);
    loop_drop_sources(self);
    Py_RETURN_NONE;
}

static PyMethodDef loop_methods[] = {
    {"pump", (PyCFunction)loop_pump, METH_VARARGS,
     "pump(epoll_fd, max_rounds) -> (datagrams, punts or None)"},
    {"add_route", (PyCFunction)loop_add_route, METH_O, "attach a Route (by its in_fd)"},
    {"remove_route", (PyCFunction)loop_remove_route, METH_O, "detach a Route; whether it was"},
    {"forget_fd", (PyCFunction)loop_forget_fd, METH_O, "a socket is closing"},
    {"hold", (PyCFunction)loop_hold, METH_VARARGS,
     "hold(fd, flag): the socket's transport has a queue; send through it"},
    {"take_due", (PyCFunction)loop_take_due, METH_O,
     "take_due(min_age): every dirty route not synced for min_age s (or urgent), marked synced"},
    {"stats", (PyCFunction)loop_stats, METH_NOARGS, "totals since the loop was made"},
    {"routes", (PyCFunction)loop_routes, METH_NOARGS, "the attached routes"},
    {"close", (PyCFunction)loop_close, METH_NOARGS, "detach every route and source"},
    {"add_source", (PyCFunction)loop_add_source, METH_O, "send a Source from now on (tick)"},
    {"remove_source", (PyCFunction)loop_remove_source, METH_O, "stop sending a Source"},
    {"tick", (PyCFunction)loop_tick, METH_NOARGS, "send every source's due frames; how many"},
    {"start_ticker", (PyCFunction)(void (*)(void))loop_start_ticker, METH_VARARGS | METH_KEYWORDS,
     "start_ticker(period, raised=False): a thread of its own sends the sources' due frames "
     "every period (raised: ahead of the process's other threads where permitted)"},
    {"stop_ticker", (PyCFunction)loop_stop_ticker, METH_NOARGS,
     "stop that thread (after its current tick); nothing if it is not running"},
    {"arm_tick", (PyCFunction)loop_arm_tick, METH_O,
     "arm_tick(at): tick_fd is ready at ``at`` (time.monotonic() clock), or at once if past"},
    {"disarm_tick", (PyCFunction)loop_disarm_tick, METH_NOARGS, "tick_fd never ready"},
    {"start_forwarding", (PyCFunction)(void (*)(void))loop_start_forwarding,
     METH_VARARGS | METH_KEYWORDS,
     "start_forwarding(epoll_fd, batch, max_rounds, raised=False): a thread of the loop's "
     "own reads the set's sockets and forwards as pump does, without the interpreter; the "
     "rest waits for take_punts, and notify_fd is ready when there is some"},
    {"stop_forwarding", (PyCFunction)loop_stop_forwarding, METH_NOARGS,
     "stop that thread (after its current round); nothing if it is not running"},
    {"set_batch", (PyCFunction)loop_set_batch, METH_O,
     "set_batch(seconds): the forwarder's batching window from now on"},
    {"take_punts", (PyCFunction)loop_take_punts, METH_NOARGS,
     "what the forwarder queued for Python since the last call, as pump's punts (or None)"},
    {"clear_tick", (PyCFunction)loop_clear_tick, METH_NOARGS,
     "read tick_fd's expiries (0 if none): no longer ready"},
    {NULL}};

static PyMemberDef loop_members[] = {
    {"dirty", T_PYSSIZET, offsetof(Loop, n_dirty), READONLY,
     "routes whose counters Python has not seen yet"},
    {"route_count", T_PYSSIZET, offsetof(Loop, n_routes), READONLY, "attached routes"},
    {"source_count", T_PYSSIZET, offsetof(Loop, n_sources), READONLY, "sources sent by tick"},
    {"tick_fd", T_INT, offsetof(Loop, tick_fd), READONLY,
     "a timerfd ready when arm_tick says (for an event loop's reader)"},
    {"ticker_running", T_INT, offsetof(Loop, ticker_running), READONLY,
     "whether start_ticker's thread sends the sources"},
    {"notify_fd", T_INT, offsetof(Loop, notify_fd), READONLY,
     "an eventfd ready while the forwarder has queued punts (-1 before start_forwarding)"},
    {"forwarding", T_INT, offsetof(Loop, forwarding), READONLY,
     "whether start_forwarding's thread reads the sockets"},
    {"forward_error", T_INT, offsetof(Loop, forward_error), READONLY,
     "the errno that stopped the forwarder (its sockets' set failed), else 0"},
    {NULL}};

static PyTypeObject LoopType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "relay.media._fastloop.Loop",
    .tp_doc = "The media sockets of one event loop, read and forwarded in batches.",
    .tp_basicsize = sizeof(Loop),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)loop_init,
    .tp_dealloc = (destructor)loop_dealloc,
    .tp_traverse = (traverseproc)loop_traverse,
    .tp_clear = (inquiry)loop_clear,
    .tp_methods = loop_methods,
    .tp_members = loop_members,
};

/* ------------------------------------------------------------------ module */

static PyObject *set_srtp(PyObject *module, PyObject *args) {
    PyObject *protect, *unprotect, *unprotect_rtcp;
    if (!PyArg_ParseTuple(args, "OOO", &protect, &unprotect, &unprotect_rtcp))
        return NULL;
    void *p = PyLong_AsVoidPtr(protect);
    if (p == NULL && PyErr_Occurred())
        return NULL;
    void *u = PyLong_AsVoidPtr(unprotect);
    if (u == NULL && PyErr_Occurred())
        return NULL;
    void *ur = PyLong_AsVoidPtr(unprotect_rtcp);
    if (ur == NULL && PyErr_Occurred())
        return NULL;
    if (p == NULL || u == NULL || ur == NULL) {
        PyErr_SetString(PyExc_ValueError, "null function addresses");
        return NULL;
    }
    srtp_protect_fn = (srtp_fn)p;
    srtp_unprotect_fn = (srtp_fn)u;
    srtp_unprotect_rtcp_fn = (srtp_fn)ur;
    Py_RETURN_NONE;
}

static PyObject *new_sink(PyObject *module, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"in_fd", "rx_session", "rx_context", "keep_payloads", NULL};
    int in_fd, keep = 0;
    PyObject *rx_session, *rx_context;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iOO|p", kwlist, &in_fd, &rx_session,
                                     &rx_context, &keep))
        return NULL;
    if (in_fd < 0 || in_fd >= MAX_FD) {
        PyErr_SetString(PyExc_ValueError, "descriptor out of range");
        return NULL;
    }
    void *rx = context_pointer(rx_context);
    if (rx == NULL)
        return NULL;
    Route *r = (Route *)RouteType.tp_alloc(&RouteType, 0);
    if (r == NULL)
        return NULL;
    r->kind = KIND_SINK;
    r->in_fd = in_fd;
    r->out_fd = -1;
    r->rx_ctx = rx;
    r->tx_ctx = rx;
    r->rx_session = Py_NewRef(rx_session);
    r->tx_session = Py_NewRef(rx_session);
    r->owner = Py_NewRef(Py_None);
    r->index = -1;
    r->dirty_index = -1;
    r->level_in = -1;
    r->keep_payloads = keep;
    r->first_packet_at = NAN;
    r->last_packet_at = NAN;
    r->last_forward_at = NAN;
    r->base_seq = r->max_seq = r->last_arrival = r->last_timestamp = -1;
    return (PyObject *)r;
}

static PyObject *media_acquire(PyObject *module, PyObject *unused) {
    lock_media();
    Py_RETURN_NONE;
}

static PyObject *media_release(PyObject *module, PyObject *unused) {
    if (pthread_mutex_unlock(&media_lock) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "the media lock is not held by this thread");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"acquire", media_acquire, METH_NOARGS,
     "take the media lock (recursive; the forwarders wait while it is held)"},
    {"release", media_release, METH_NOARGS, "let go of the media lock once"},
    {"new_sink", (PyCFunction)(void (*)(void))new_sink, METH_VARARGS | METH_KEYWORDS,
     "new_sink(in_fd, rx_session, rx_context, keep_payloads=False): a route that records "
     "the authentic RTP its socket receives (Route.take_records) instead of forwarding it"},
    {"set_srtp", set_srtp, METH_VARARGS,
     "set_srtp(protect_address, unprotect_address, unprotect_rtcp_address): libsrtp's "
     "srtp_protect, srtp_unprotect and srtp_unprotect_rtcp, as loaded by pylibsrtp"},
    {NULL}};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "relay.media._fastloop",
    "The forwarding fast path's per-datagram loop (see relay/media/fastloop.py).", -1,
    module_methods};

PyMODINIT_FUNC PyInit__fastloop(void) {
    /* Recursive: Python code that holds it (relay.media.fastloop.locked) calls the loops'
     * and routes' methods, which take it too. Error-checking within that: unlocking a lock
     * this thread does not hold fails instead of corrupting it. */
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&media_lock, &attr);
    pthread_mutexattr_destroy(&attr);
    if (PyType_Ready(&RouteType) < 0 || PyType_Ready(&LoopType) < 0 ||
        PyType_Ready(&SourceType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Route", (PyObject *)&RouteType) < 0 ||
        PyModule_AddObjectRef(m, "Loop", (PyObject *)&LoopType) < 0 ||
        PyModule_AddObjectRef(m, "Source", (PyObject *)&SourceType) < 0 ||
        PyModule_AddIntConstant(m, "RECORD_SIZE", RECORD_SIZE) < 0 ||
        PyModule_AddIntConstant(m, "SO_TIMESTAMPNS", SO_TIMESTAMPNS) < 0 ||
        PyModule_AddIntConstant(m, "PUNT_RAW", PUNT_RAW) < 0 ||
        PyModule_AddIntConstant(m, "PUNT_PLAIN", PUNT_PLAIN) < 0 ||
        PyModule_AddIntConstant(m, "PUNT_SEND", PUNT_SEND) < 0 ||
        PyModule_AddIntConstant(m, "PUNT_TAP", PUNT_TAP) < 0 ||
        PyModule_AddIntConstant(m, "PUNT_ERROR", PUNT_ERROR) < 0 ||
        PyModule_AddIntConstant(m, "PUNT_SYNC", PUNT_SYNC) < 0 ||
        PyModule_AddIntConstant(m, "PUNT_RTCP_PLAIN", PUNT_RTCP_PLAIN) < 0 ||
        PyModule_AddIntConstant(m, "RTCP_PENDING", RTCP_PENDING) < 0 ||
        PyModule_AddIntConstant(m, "SYNCS_PER_PUMP", SYNCS_PER_PUMP) < 0 ||
        PyModule_AddIntConstant(m, "VLEN", VLEN) < 0 ||
        PyModule_AddIntConstant(m, "SRTP_BUFFER", SRTP_BUFFER) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
