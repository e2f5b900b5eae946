// SPDX-License-Identifier: GPL-2.0
/*
 * kube-proxy's eBPF mode for the testbed's nodes (testbed.kubernetes.dataplane.ebpf): one tc
 * ingress program, cnlb_ingress, on every interface of a node that traffic enters by (the
 * uplink, flannel.1, each pod's veth). The shape of Cilium's lb4:
 *
 *   cnlb_services  frontend (address, port, protocol) -> how many backends, how to pick
 *   cnlb_backends  (frontend, slot) -> backend address and port
 *   cnlb_maglev    frontend -> its Maglev lookup table (slot per entry), built in userspace
 *   cnlb_ct        the client's tuple -> the rewrite its packets get (DNAT, maybe SNAT)
 *   cnlb_revnat    the backend's reply tuple -> the rewrite back to what the client sent to
 *   cnlb_affinity  (frontend, client address) -> the backend ClientIP affinity keeps
 *   cnlb_src_range (frontend, client CIDR) -> allowed: a service's loadBalancerSourceRanges
 *                  (Cilium's lb4_src_range map, an LPM trie keyed by the frontend, not its
 *                  rev_nat_id); a frontend flagged SVC_SOURCE_RANGE admits a new connection
 *                  only from a source it holds (its LB IPs: node ports, cluster IPs are open)
 *
 * Replies are translated where they enter the node (a local pod's veth, flannel.1, the
 * uplink), before the kernel routes them: every way back passes one of those ingresses.
 *
 * Direct server return (a frontend flagged SVC_DSR, Cilium's loadBalancer.mode=dsr with its
 * default dispatch, an IPv4 option): a request from outside the cluster is DNATed but not
 * SNATed; when its pod is on another node the first packet (a TCP SYN, every UDP datagram)
 * leaves with an 8-byte IPv4 option carrying the frontend the client used. The pod's node
 * reads it at its ingress and keeps it in cnlb_revnat, so the pod's reply is translated back
 * to that frontend there and leaves that node for the client directly.
 * A new TCP connection to a frontend without backends is answered with a RST (kube-proxy's
 * REJECT: the client sees "connection refused" at once); a frontend marked drop (Local policy
 * with no local endpoint, as upstream's KUBE-EXT drop) drops.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ETH_HLEN_ 14
#define ETH_P_IP_ 0x0800
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define TC_ACT_OK_ 0
#define TC_ACT_SHOT_ 2
#define AF_INET_ 2

#define MAGLEV_M_MAX 1021         /* the largest table a service may have (a prime) */
#define AFFINITY_CHECK_MAX 64     /* backends a sticky backend is checked against */
#define MASQ_MARK 0x4000          /* kube-proxy's masquerade mark: flannel's ip-masq skips it */

#define SVC_SNAT 1                /* externalTrafficPolicy Cluster: SNAT to the node */
#define SVC_DROP 2                /* no backend here, drop (not reject) */
#define SVC_SNAT_OUTSIDE 4        /* SNAT sources outside the cluster CIDR (a cluster IP) */
#define SVC_SNAT_HOST 8           /* SNAT what the node itself sends */
#define SCOPE_ALL 0               /* a frontend's entry for every source */
#define SCOPE_INTERNAL 1          /* ... for pods and the node itself (Local policy's bypass) */
#define ALGO_RANDOM 0
#define ALGO_MAGLEV 1
#define SVC_DSR 16                /* outside sources: no SNAT, DSR to a remote backend */
#define SVC_SOURCE_RANGE 32       /* loadBalancerSourceRanges: Cilium's SVC_FLAG_SOURCE_RANGE */
#define BACKEND_REMOTE 1          /* the backend is on another node (backend.flags) */
#define CT_DSR 1                  /* cnlb_ct value's pad[0]: the connection goes by DSR */
/* Cilium's DSR_IPV4_OPT_TYPE (IPOPT_COPY | 0x1a) and its 8 bytes: type, length, port, address */
#define DSR_OPT_TYPE 0x9a
#define DSR_OPT_LEN 8

struct frontend {
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 scope;          /* SCOPE_*, as Cilium's lb4_key.scope */
};

struct service {
	__u16 count;         /* backends: slots 0..count-1 */
	__u8 flags;          /* SVC_* */
	__u8 algorithm;      /* ALGO_* */
	__u32 affinity_s;    /* ClientIP affinity timeout, 0: none */
	__u16 maglev_m;      /* table size (prime), 0 unless Maglev */
	__u16 pad;
};

struct backend_key {
	struct frontend fe;
	__u32 slot;
};

struct backend {
	__be32 addr;
	__be16 port;
	__u16 flags;         /* BACKEND_* */
};

/* Cilium's struct dsr_opt_v4: the frontend the client sent to, for the backend's node */
struct dsr_opt {
	__u8 type;
	__u8 len;
	__be16 port;
	__be32 addr;
};

struct maglev_table {
	__u16 slot[MAGLEV_M_MAX];
};

struct tuple {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct affinity_key {
	struct frontend fe;
	__be32 client;
};

/* Cilium's struct lb4_src_range_key with the frontend for its rev_nat_id: prefixlen counts
 * the frontend's 64 bits (always matched whole) plus the CIDR's length */
struct src_range_key {
	__u32 prefixlen;
	struct frontend fe;  /* its scope is always SCOPE_ALL: one set for both scopes */
	__be32 addr;
};

#define SRC_RANGE_STATIC_PREFIX (8 * sizeof(struct frontend))

struct affinity {
	struct backend be;
	__u64 last_ns;
};

struct config {
	__be32 node_ip;      /* the SNAT address when the route has none */
	__be32 cluster_net;  /* the cluster CIDR (kube-proxy's --cluster-cidr) ... */
	__be32 cluster_mask; /* ... and its mask; 0: unknown, no source is a pod */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct frontend);
	__type(value, struct service);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cnlb_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct backend_key);
	__type(value, struct backend);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cnlb_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct frontend);
	__type(value, struct maglev_table);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cnlb_maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct tuple);
	__type(value, struct tuple);
} cnlb_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct tuple);
	__type(value, struct tuple);
} cnlb_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct affinity_key);
	__type(value, struct affinity);
} cnlb_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__type(key, struct src_range_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cnlb_src_range SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} cnlb_config SEC(".maps");

static __always_inline __u32 mix(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* The connection's hash: the same 5-tuple picks the same Maglev entry on every node. */
static __always_inline __u32 tuple_hash(const struct tuple *t)
{
	__u32 ports = ((__u32)bpf_ntohs(t->sport) << 16) | bpf_ntohs(t->dport);
	return mix(bpf_ntohl(t->saddr) ^ mix(bpf_ntohl(t->daddr) ^ mix(ports ^ mix(t->proto))));
}

/* Rewrite the packet's addresses and ports from `from` to `to`, checksums included. */
static __always_inline int rewrite(struct __sk_buff *skb, __u32 l4off, const struct tuple *from,
				   const struct tuple *to)
{
	__u32 csum_off = l4off + (from->proto == IPPROTO_TCP_ ? 16 : 6);
	__u64 l4flags = from->proto == IPPROTO_UDP_ ? BPF_F_MARK_MANGLED_0 : 0;

	if (from->saddr != to->saddr) {
		if (bpf_l4_csum_replace(skb, csum_off, from->saddr, to->saddr,
					l4flags | BPF_F_PSEUDO_HDR | 4) ||
		    bpf_l3_csum_replace(skb, ETH_HLEN_ + 10, from->saddr, to->saddr, 4) ||
		    bpf_skb_store_bytes(skb, ETH_HLEN_ + 12, &to->saddr, 4, 0))
			return -1;
	}
	if (from->daddr != to->daddr) {
		if (bpf_l4_csum_replace(skb, csum_off, from->daddr, to->daddr,
					l4flags | BPF_F_PSEUDO_HDR | 4) ||
		    bpf_l3_csum_replace(skb, ETH_HLEN_ + 10, from->daddr, to->daddr, 4) ||
		    bpf_skb_store_bytes(skb, ETH_HLEN_ + 16, &to->daddr, 4, 0))
			return -1;
	}
	if (from->sport != to->sport) {
		if (bpf_l4_csum_replace(skb, csum_off, from->sport, to->sport, l4flags | 2) ||
		    bpf_skb_store_bytes(skb, l4off, &to->sport, 2, 0))
			return -1;
	}
	if (from->dport != to->dport) {
		if (bpf_l4_csum_replace(skb, csum_off, from->dport, to->dport, l4flags | 2) ||
		    bpf_skb_store_bytes(skb, l4off + 2, &to->dport, 2, 0))
			return -1;
	}
	return 0;
}

static __always_inline __u16 fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* Turn a TCP segment to a frontend without backends into the RST the client's stack takes as
 * "connection refused", and send it back to the sender. */
static __always_inline int reject_tcp(struct __sk_buff *skb, int from_host)
{
	struct iphdr ip;
	struct tcphdr th;
	__u8 eth[12], mac[6];
	__be32 addr;
	__be16 port;
	__u32 payload;

	if (bpf_skb_load_bytes(skb, 0, eth, 12) ||
	    bpf_skb_load_bytes(skb, ETH_HLEN_, &ip, sizeof(ip)) || ip.ihl != 5 ||
	    bpf_skb_load_bytes(skb, ETH_HLEN_ + 20, &th, sizeof(th)) || th.rst)
		return TC_ACT_SHOT_;
	payload = bpf_ntohs(ip.tot_len) - 20 - th.doff * 4;
	__builtin_memcpy(mac, eth, 6);
	__builtin_memcpy(eth, eth + 6, 6);
	__builtin_memcpy(eth + 6, mac, 6);
	addr = ip.saddr;
	ip.saddr = ip.daddr;
	ip.daddr = addr;
	ip.tot_len = bpf_htons(40);
	ip.ttl = 64;
	ip.id = 0;
	ip.frag_off = 0;
	ip.check = 0;
	ip.check = fold(bpf_csum_diff(0, 0, (__be32 *)&ip, sizeof(ip), 0));
	port = th.source;
	th.source = th.dest;
	th.dest = port;
	if (th.ack) {
		th.seq = th.ack_seq;
		th.ack_seq = 0;
		th.ack = 0;
	} else {
		th.ack_seq = bpf_htonl(bpf_ntohl(th.seq) + payload + th.syn + th.fin);
		th.seq = 0;
		th.ack = 1;
	}
	th.rst = 1;
	th.syn = 0;
	th.fin = 0;
	th.psh = 0;
	th.urg = 0;
	th.doff = 5;
	th.window = 0;
	th.urg_ptr = 0;
	th.check = 0;
	struct {
		__be32 saddr, daddr;
		__u8 zero, proto;
		__be16 len;
	} pseudo = {ip.saddr, ip.daddr, 0, IPPROTO_TCP_, bpf_htons(20)};
	__u32 sum = bpf_csum_diff(0, 0, (__be32 *)&pseudo, sizeof(pseudo), 0);
	th.check = fold(bpf_csum_diff(0, 0, (__be32 *)&th, sizeof(th), sum));
	if (bpf_skb_change_tail(skb, ETH_HLEN_ + 40, 0) ||
	    bpf_skb_store_bytes(skb, 0, eth, 12, 0) ||
	    bpf_skb_store_bytes(skb, ETH_HLEN_, &ip, sizeof(ip), 0) ||
	    bpf_skb_store_bytes(skb, ETH_HLEN_ + 20, &th, sizeof(th), 0))
		return TC_ACT_SHOT_;
	/* back the way it came: out of the interface, or into the node that sent it */
	return bpf_redirect(skb->ifindex, from_host ? BPF_F_INGRESS : 0);
}

/* Insert the DSR option after the IPv4 header (bpf_skb_adjust_room at the network layer, as
 * Cilium's dsr_set_opt4): the frontend rides to the backend's node with the packet itself,
 * which stays plain routed IP between the nodes. */
static __always_inline int dsr_add_opt(struct __sk_buff *skb, __be32 addr, __be16 port)
{
	struct {
		struct iphdr ip;
		struct dsr_opt opt;
	} h;

	if (bpf_skb_load_bytes(skb, ETH_HLEN_, &h.ip, sizeof(h.ip)) || h.ip.ihl != 5)
		return -1;   /* options already: no room for ours */
	if (bpf_skb_adjust_room(skb, DSR_OPT_LEN, BPF_ADJ_ROOM_NET, 0))
		return -1;
	h.opt.type = DSR_OPT_TYPE;
	h.opt.len = DSR_OPT_LEN;
	h.opt.port = port;
	h.opt.addr = addr;
	h.ip.ihl = 5 + DSR_OPT_LEN / 4;
	h.ip.tot_len = bpf_htons(bpf_ntohs(h.ip.tot_len) + DSR_OPT_LEN);
	h.ip.check = 0;
	h.ip.check = fold(bpf_csum_diff(0, 0, (__be32 *)&h, sizeof(h), 0));
	return bpf_skb_store_bytes(skb, ETH_HLEN_, &h, sizeof(h), 0);
}

/* At the backend's node: a request carrying the DSR option. The pod's reply (the request's
 * tuple reversed) will be translated back to the frontend in the option, here. The option
 * stays on the packet (unknown options are ignored by the receiving stack, as Cilium leaves
 * it). */
static __always_inline void dsr_record(struct __sk_buff *skb, const struct tuple *t)
{
	struct dsr_opt opt;

	if (bpf_skb_load_bytes(skb, ETH_HLEN_ + 20, &opt, sizeof(opt)) ||
	    opt.type != DSR_OPT_TYPE || opt.len != DSR_OPT_LEN)
		return;
	struct tuple back = {.saddr = t->daddr, .daddr = t->saddr, .sport = t->dport,
			     .dport = t->sport, .proto = t->proto};
	struct tuple orig = {.saddr = opt.addr, .daddr = t->saddr, .sport = opt.port,
			     .dport = t->sport, .proto = t->proto};
	bpf_map_update_elem(&cnlb_revnat, &back, &orig, BPF_ANY);
}

/* Is `be` still one of the frontend's backends? (A sticky backend or a tracked connection's
 * backend may have been removed since.) */
static __always_inline int backend_valid(const struct frontend *fe, const struct service *svc,
					 __be32 addr, __be16 port)
{
	struct backend_key k = {.fe = *fe};

	for (__u32 i = 0; i < AFFINITY_CHECK_MAX; i++) {
		if (i >= svc->count)
			return 0;
		k.slot = i;
		struct backend *b = bpf_map_lookup_elem(&cnlb_backends, &k);
		if (b && b->addr == addr && b->port == port)
			return 1;
	}
	return svc->count > AFFINITY_CHECK_MAX;   /* past what is checked: trust it */
}

/* Cilium's lb4_src_range_ok: may a new connection from saddr use this frontend? */
static __always_inline int src_range_ok(const struct frontend *fe, const struct service *svc,
					__be32 saddr)
{
	if (!(svc->flags & SVC_SOURCE_RANGE))
		return 1;
	struct src_range_key k = {.prefixlen = SRC_RANGE_STATIC_PREFIX + 32, .fe = *fe,
				  .addr = saddr};
	k.fe.scope = SCOPE_ALL;
	return bpf_map_lookup_elem(&cnlb_src_range, &k) != 0;
}

static __always_inline struct backend *select_backend(const struct frontend *fe,
						      const struct service *svc,
						      const struct tuple *t)
{
	struct backend_key k = {.fe = *fe};

	if (svc->algorithm == ALGO_MAGLEV && svc->maglev_m) {
		struct maglev_table *table = bpf_map_lookup_elem(&cnlb_maglev, fe);
		__u32 i = tuple_hash(t) % svc->maglev_m;

		if (!table || i >= MAGLEV_M_MAX)
			return 0;
		k.slot = table->slot[i];
	} else {
		k.slot = bpf_get_prandom_u32() % svc->count;
	}
	return bpf_map_lookup_elem(&cnlb_backends, &k);
}

/* The source address the kernel would masquerade to on the way to `dst` (the preferred
 * source of its route), as MASQUERADE picks it; the node's address when there is none. */
static __always_inline __be32 snat_source(struct __sk_buff *skb, const struct tuple *t,
					  __be32 dst, __u32 ifindex, const struct config *cfg)
{
	struct bpf_fib_lookup p = {};

	p.family = AF_INET_;
	p.l4_protocol = t->proto;
	p.ipv4_dst = dst;
	p.ifindex = ifindex;
	if (bpf_fib_lookup(skb, &p, sizeof(p), BPF_FIB_LOOKUP_SRC | BPF_FIB_LOOKUP_SKIP_NEIGH) ==
		    BPF_FIB_LKUP_RET_SUCCESS && p.ipv4_src)
		return p.ipv4_src;
	return cfg ? cfg->node_ip : 0;
}

/* What the node itself sent, translated on its way out: the route it took was to the
 * frontend, so send it where the route to the backend leaves (neighbour resolved there). */
static __always_inline int reroute(struct __sk_buff *skb, __be32 dst)
{
	struct bpf_fib_lookup p = {};

	p.family = AF_INET_;
	p.ipv4_dst = dst;
	p.ifindex = skb->ifindex;
	if (bpf_fib_lookup(skb, &p, sizeof(p), BPF_FIB_LOOKUP_SKIP_NEIGH) !=
	    BPF_FIB_LKUP_RET_SUCCESS)
		return TC_ACT_OK_;
	return bpf_redirect_neigh(p.ifindex, 0, 0, 0);
}

/* The service translation, for a packet entering the node (from_host 0) or one the node sent
 * (from_host 1, on its way out). */
static __always_inline int lb(struct __sk_buff *skb, int from_host)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph;
	struct tuple t = {}, to, back;
	struct frontend fe = {};
	struct service *svc;
	struct backend *be, chosen;
	__u32 l4off;
	__u8 tcpflags = 0;
	int syn;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP_))
		return TC_ACT_OK_;
	iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > data_end)
		return TC_ACT_OK_;
	if (iph->protocol != IPPROTO_TCP_ && iph->protocol != IPPROTO_UDP_)
		return TC_ACT_OK_;
	if (iph->frag_off & bpf_htons(0x3fff))   /* fragments: no ports to look at */
		return TC_ACT_OK_;
	l4off = ETH_HLEN_ + iph->ihl * 4;
	t.saddr = iph->saddr;
	t.daddr = iph->daddr;
	t.proto = iph->protocol;
	if (bpf_skb_load_bytes(skb, l4off, &t.sport, 4))
		return TC_ACT_OK_;
	if (t.proto == IPPROTO_TCP_ && bpf_skb_load_bytes(skb, l4off + 13, &tcpflags, 1))
		return TC_ACT_OK_;
	syn = (tcpflags & 0x12) == 0x02;   /* SYN without ACK: a new connection */
	/* the first packet of a connection to one of this node's pods, sent on by DSR */
	if (!from_host && iph->ihl == 5 + DSR_OPT_LEN / 4)
		dsr_record(skb, &t);
	/* DSR sends the option with a TCP connection's SYN only (the pod's node keeps it), with
	 * every UDP datagram (no connection to keep it by) */
	int dsr_opt = syn || t.proto == IPPROTO_UDP_;

	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&cnlb_config, &zero);
	int from_pod = cfg && cfg->cluster_mask &&
		       (t.saddr & cfg->cluster_mask) == cfg->cluster_net;

	fe.addr = t.daddr;
	fe.port = t.dport;
	fe.proto = t.proto;
	svc = 0;
	if (from_pod || from_host) {   /* Local policy: pods and the node use every endpoint */
		fe.scope = SCOPE_INTERNAL;
		svc = bpf_map_lookup_elem(&cnlb_services, &fe);
	}
	if (!svc) {
		fe.scope = SCOPE_ALL;
		svc = bpf_map_lookup_elem(&cnlb_services, &fe);
	}

	/* A tracked connection keeps its backend (a new SYN on a reused tuple only while that
	 * backend is still the service's). */
	struct tuple *ct = bpf_map_lookup_elem(&cnlb_ct, &t);
	if (ct && (!syn || !svc || backend_valid(&fe, svc, ct->daddr, ct->dport))) {
		to = *ct;
		if (to.saddr != t.saddr || to.pad[0] & CT_DSR)
			skb->mark = MASQ_MARK;
		if (rewrite(skb, l4off, &t, &to))
			return TC_ACT_SHOT_;
		if (to.pad[0] & CT_DSR && dsr_opt && dsr_add_opt(skb, t.daddr, t.dport))
			return TC_ACT_SHOT_;
		return from_host ? reroute(skb, to.daddr) : TC_ACT_OK_;
	}
	struct tuple *rev = from_host ? 0 : bpf_map_lookup_elem(&cnlb_revnat, &t);
	if (rev) {
		to = *rev;
		return rewrite(skb, l4off, &t, &to) ? TC_ACT_SHOT_ : TC_ACT_OK_;
	}
	if (!svc)
		return TC_ACT_OK_;
	/* a source outside loadBalancerSourceRanges is dropped before anything else, as
	 * Cilium's nodeport_lb4 and kube-proxy's firewall chains drop it (a tracked connection
	 * went by above: conntrack keeps it, as the iptables mode's nat table does) */
	if (!src_range_ok(&fe, svc, t.saddr))
		return TC_ACT_SHOT_;
	if (svc->count == 0) {
		if (svc->flags & SVC_DROP || t.proto != IPPROTO_TCP_)
			return TC_ACT_SHOT_;
		return reject_tcp(skb, from_host);
	}

	be = 0;
	struct affinity_key ak = {.fe = fe, .client = t.saddr};
	__u64 now = bpf_ktime_get_ns();
	if (svc->affinity_s) {
		struct affinity *a = bpf_map_lookup_elem(&cnlb_affinity, &ak);
		if (a && now - a->last_ns < (__u64)svc->affinity_s * 1000000000ULL &&
		    backend_valid(&fe, svc, a->be.addr, a->be.port)) {
			chosen = a->be;
			be = &chosen;
		}
	}
	if (!be)
		be = select_backend(&fe, svc, &t);
	if (!be)
		return TC_ACT_SHOT_;
	chosen = *be;
	if (svc->affinity_s) {
		struct affinity a = {.be = chosen, .last_ns = now};
		bpf_map_update_elem(&cnlb_affinity, &ak, &a, BPF_ANY);
	}

	to = t;
	to.daddr = chosen.addr;
	to.dport = chosen.port;
	/* DSR: traffic from outside the cluster keeps its source; the pods and the node itself
	 * are SNATed as without it (their replies come back through this node anyway) */
	int dsr = svc->flags & SVC_DSR && !from_host && !from_pod;
	if (dsr && chosen.flags & BACKEND_REMOTE) {
		to.pad[0] = CT_DSR;
		/* the mark keeps flannel's ip-masq (outside source to a remote pod) away too */
		skb->mark = MASQ_MARK;
	}
	/* SNAT for external traffic with policy Cluster, and for a pod reaching itself
	 * (hairpin: it would drop a packet from its own address) */
	if ((svc->flags & SVC_SNAT && !dsr) || chosen.addr == t.saddr ||
	    (svc->flags & SVC_SNAT_HOST && from_host) ||
	    (svc->flags & SVC_SNAT_OUTSIDE && cfg && cfg->cluster_mask && !from_pod)) {
		to.saddr = snat_source(skb, &t, chosen.addr,
				       from_host ? skb->ifindex : skb->ingress_ifindex, cfg);
		if (!to.saddr)
			return TC_ACT_SHOT_;
		/* keep the client's port unless another client's connection holds it */
		for (int i = 0; i < 8; i++) {
			struct tuple rk = {.saddr = chosen.addr, .daddr = to.saddr,
					   .sport = chosen.port, .dport = to.sport, .proto = t.proto};
			struct tuple *held = bpf_map_lookup_elem(&cnlb_revnat, &rk);
			if (!held || (held->daddr == t.saddr && held->dport == t.sport))
				break;
			to.sport = bpf_htons(32768 + bpf_get_prandom_u32() % 28232);
		}
		skb->mark = MASQ_MARK;
	}
	back.saddr = to.daddr;
	back.daddr = to.saddr;
	back.sport = to.dport;
	back.dport = to.sport;
	back.proto = t.proto;
	__builtin_memset(back.pad, 0, sizeof(back.pad));
	struct tuple orig = {.saddr = t.daddr, .daddr = t.saddr, .sport = t.dport,
			     .dport = t.sport, .proto = t.proto};
	bpf_map_update_elem(&cnlb_ct, &t, &to, BPF_ANY);
	bpf_map_update_elem(&cnlb_revnat, &back, &orig, BPF_ANY);
	if (rewrite(skb, l4off, &t, &to))
		return TC_ACT_SHOT_;
	if (to.pad[0] & CT_DSR && dsr_opt && dsr_add_opt(skb, t.daddr, t.dport))
		return TC_ACT_SHOT_;
	return from_host ? reroute(skb, to.daddr) : TC_ACT_OK_;
}

/* At ingress on every interface traffic enters the node by: requests to frontends, and the
 * replies coming back from backends. */
SEC("tc")
int cnlb_ingress(struct __sk_buff *skb)
{
	return lb(skb, 0);
}

/* At egress on the node's uplink: what the node itself sends to a frontend (its route to a
 * cluster IP or an LB address leaves there). Forwarded traffic was translated on the way in. */
SEC("tc")
int cnlb_host(struct __sk_buff *skb)
{
	return lb(skb, 1);
}

char LICENSE[] SEC("license") = "GPL";
