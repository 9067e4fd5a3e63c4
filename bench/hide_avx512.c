/* Hide AVX-512, AVX10 and AMX from every CPUID a process executes, so that each library in it
 * (ONNX Runtime's MLAS, oneDNN, PyTorch's ATen, OpenBLAS, LLVM's host detection in Numba)
 * picks its AVX2 code as on a CPU without them. For the benchmark's AVX2 runs on an AVX-512
 * machine: `python bench/run.py --hide-avx512` builds this and preloads it into its children.
 *
 * How: Linux's CPUID faulting (arch_prctl ARCH_SET_CPUID 0, CPUs with the `cpuid_fault` flag)
 * turns every CPUID of this thread, and of the threads and processes it starts, into a SIGSEGV.
 * The handler runs the real CPUID (faulting off for that one instruction), clears the bits below,
 * writes the four registers and steps over the instruction. Any other SIGSEGV goes to the handler
 * the process installs (sigaction is wrapped so that ours stays first; Python's signal module
 * and faulthandler go through it) or kills as usual.
 *
 * Not hidden: glibc chose its string functions before this runs (GLIBC_TUNABLES does that, set
 * by bench/hide_avx512.py), and XGETBV still reports the AVX-512 register state; libraries take
 * AVX-512 only when CPUID says so too.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define ARCH_SET_CPUID 0x1012

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);

static struct sigaction next_action; /* the process's own SIGSEGV handler, if it sets one */
static sigaction_fn real_sigaction;  /* libc's, found once (dlsym is no call for a handler) */
static int active;

static long arch_prctl(int code, unsigned long arg) { return syscall(SYS_arch_prctl, code, arg); }

/* leaf 7: AVX-512 F/DQ/IFMA/PF/ER/CD/BW/VL (EBX), VBMI/VBMI2/VNNI/BITALG/VPOPCNTDQ (ECX),
 * 4VNNIW/4FMAPS/VP2INTERSECT/AMX-BF16/FP16/AMX-TILE/AMX-INT8 (EDX); leaf 7.1: AVX512-BF16 (EAX),
 * AVX10 (EDX); leaf 0x24 (AVX10's own leaf): all zero. */
static void mask(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
    if (leaf == 7 && sub == 0) {
        r[1] &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) |
                  (1u << 30) | (1u << 31));
        r[2] &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
        r[3] &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) |
                  (1u << 25));
    } else if (leaf == 7 && sub == 1) {
        r[0] &= ~(1u << 5);
        r[3] &= ~(1u << 19);
    } else if (leaf == 0x24) {
        r[0] = r[1] = r[2] = r[3] = 0;
    }
}

static void pass_on(int sig, siginfo_t *info, void *context) {
    if (next_action.sa_flags & SA_SIGINFO) {
        if (next_action.sa_sigaction) {
            next_action.sa_sigaction(sig, info, context);
            return;
        }
    } else if (next_action.sa_handler != SIG_DFL && next_action.sa_handler != SIG_IGN) {
        next_action.sa_handler(sig);
        return;
    }
    /* the default action: returning re-runs the faulting instruction, which now kills */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    real_sigaction(SIGSEGV, &dfl, NULL);
}

static void on_segv(int sig, siginfo_t *info, void *context) {
    ucontext_t *uc = context;
    greg_t *regs = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)regs[REG_RIP];
    /* CPUID faulting raises a general protection fault: si_code SI_KERNEL, no address */
    if (info->si_code != SI_KERNEL || ip[0] != 0x0f || ip[1] != 0xa2) {
        pass_on(sig, info, context);
        return;
    }
    uint32_t r[4], leaf = (uint32_t)regs[REG_RAX], sub = (uint32_t)regs[REG_RCX];
    arch_prctl(ARCH_SET_CPUID, 1);
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
    arch_prctl(ARCH_SET_CPUID, 0);
    mask(leaf, sub, r);
    regs[REG_RAX] = r[0]; /* a 32-bit result clears the upper half, as CPUID itself does */
    regs[REG_RBX] = r[1];
    regs[REG_RCX] = r[2];
    regs[REG_RDX] = r[3];
    regs[REG_RIP] += 2;
}

/* The process may install its own SIGSEGV handler later (Python's faulthandler does): keep ours
 * in place and call theirs for every fault that is not a CPUID. */
int sigaction(int sig, const struct sigaction *action, struct sigaction *old) {
    if (!real_sigaction)
        real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
    if (sig != SIGSEGV || !active)
        return real_sigaction(sig, action, old);
    if (old)
        *old = next_action;
    if (action)
        next_action = *action;
    return 0;
}

__attribute__((constructor)) static void start(void) {
    sigaction_fn real = real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
    struct sigaction ours;
    memset(&ours, 0, sizeof ours);
    ours.sa_sigaction = on_segv;
    ours.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&ours.sa_mask);
    if (real(SIGSEGV, &ours, &next_action) != 0)
        return;
    if (arch_prctl(ARCH_SET_CPUID, 0) != 0) { /* no CPUID faulting here: leave things as they are */
        real(SIGSEGV, &next_action, NULL);
        return;
    }
    active = 1;
}
