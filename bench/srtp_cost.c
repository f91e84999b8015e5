/* SRTP protect and unprotect per packet, for bench/srtp_libraries.py.
 *
 * Built at run time into a small shared library and called through ctypes with the
 * functions of the libsrtp to measure (pylibsrtp's, or Debian's libsrtp2): the same code
 * drives both, so only the library differs. The policy struct is libsrtp 2.x's public
 * srtp_policy_t (srtp2/srtp.h), declared here so that no -dev package is needed.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    int cipher_type, cipher_key_len, auth_type, auth_key_len, auth_tag_len, sec_serv;
} crypto_policy;
typedef struct {
    int type;
    unsigned int value;
} ssrc_spec;
typedef struct policy {
    ssrc_spec ssrc;
    crypto_policy rtp, rtcp;
    unsigned char *key;
    void **keys;
    unsigned long num_master_keys;
    void *deprecated_ekt;
    unsigned long window_size;
    int allow_repeat_tx;
    int *enc_xtn_hdr;
    int enc_xtn_hdr_count;
    struct policy *next;
} policy;

typedef int (*init_fn)(void);
typedef int (*create_fn)(void **session, const policy *p);
typedef int (*process_fn)(void *session, void *header, int *length);
typedef void (*set_policy_fn)(crypto_policy *p);
typedef int (*dealloc_fn)(void *session);

#define HEADER 20 /* RTP header (12) and a one-byte extension block with mid (8) */
#define SLOT 256    /* a packet and its tag, cache line aligned */
#define BATCH 256   /* packets protected, then unprotected, in one cache-warm ring */

static double cpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

/* The protect loop and the unprotect loop are functions of their own so that callgrind
 * can count each one's instructions (--toggle-collect). */
__attribute__((noinline)) int run_protect(process_fn protect, void *tx, uint8_t *slots, int *lens,
                                         const uint8_t *plain, int plain_len, int first,
                                         int packets) {
    for (int k = 0; k < packets; k++) {
        int i = first + k;
        uint8_t *p = slots + (size_t)k * SLOT;
        memcpy(p, plain, (size_t)plain_len);
        p[2] = (uint8_t)(i >> 8);
        p[3] = (uint8_t)i;
        uint32_t ts = (uint32_t)i * 960;
        p[4] = (uint8_t)(ts >> 24);
        p[5] = (uint8_t)(ts >> 16);
        p[6] = (uint8_t)(ts >> 8);
        p[7] = (uint8_t)ts;
        lens[k] = plain_len;
        if (protect(tx, p, &lens[k]) != 0)
            return -1;
    }
    return 0;
}

__attribute__((noinline)) int run_unprotect(process_fn unprotect, void *rx, uint8_t *slots,
                                           int *lens, int packets) {
    for (int i = 0; i < packets; i++)
        if (unprotect(rx, slots + (size_t)i * SLOT, &lens[i]) != 0)
            return -1;
    return 0;
}

/* AES-256-GCM (what aiortc negotiates first): ns of CPU per protect and per unprotect of
 * ``packets`` packets with ``payload`` bytes of payload. Returns 0, or <0 on failure. */
int measure(init_fn init, create_fn create, process_fn protect, process_fn unprotect,
            set_policy_fn set_gcm256, dealloc_fn dealloc, int packets, int payload,
            double *ns_protect, double *ns_unprotect) {
    if (init != NULL)
        init(); /* pylibsrtp's library is initialised already (a second call is refused) */
    unsigned char key[44];
    for (int i = 0; i < 44; i++)
        key[i] = (unsigned char)(i * 7 + 3);
    policy tx, rx;
    memset(&tx, 0, sizeof(tx));
    memset(&rx, 0, sizeof(rx));
    set_gcm256(&tx.rtp);
    set_gcm256(&tx.rtcp);
    set_gcm256(&rx.rtp);
    set_gcm256(&rx.rtcp);
    tx.ssrc.type = 3; /* any outbound */
    rx.ssrc.type = 2; /* any inbound */
    tx.key = rx.key = key;
    tx.window_size = rx.window_size = 128;
    void *txs = NULL, *rxs = NULL;
    if (create(&txs, &tx) != 0 || create(&rxs, &rx) != 0)
        return -2;
    uint8_t plain[SLOT];
    memset(plain, 0x5A, sizeof(plain));
    const uint8_t header[HEADER] = {0x90, 111, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78,
                                    0xBE, 0xDE, 0, 1, 0x10, '0', 0, 0};
    memcpy(plain, header, HEADER);
    uint8_t *slots = malloc((size_t)BATCH * SLOT);
    int *lens = malloc((size_t)BATCH * sizeof(int));
    if (slots == NULL || lens == NULL)
        return -3;
    memset(slots, 0, (size_t)BATCH * SLOT);
    int rc = 0;
    double protect_ns = 0, unprotect_ns = 0;
    for (int first = 0; first < packets && rc == 0; first += BATCH) {
        int count = packets - first < BATCH ? packets - first : BATCH;
        double t0 = cpu_now();
        if (run_protect(protect, txs, slots, lens, plain, HEADER + payload, first, count) != 0)
            rc = -4;
        double t1 = cpu_now();
        if (rc == 0 && run_unprotect(unprotect, rxs, slots, lens, count) != 0)
            rc = -5;
        double t2 = cpu_now();
        protect_ns += t1 - t0;
        unprotect_ns += t2 - t1;
    }
    *ns_protect = protect_ns / packets;
    *ns_unprotect = unprotect_ns / packets;
    free(slots);
    free(lens);
    dealloc(txs);
    dealloc(rxs);
    return rc;
}
