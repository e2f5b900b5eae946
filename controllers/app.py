"""The os-ken app: one handler per OpenFlow event, each a few lines, calling the VpcService.

VpcController: read like Ryu's simple_switch_13.py -- unpack the event, call the service, which
    finds the switch's state, asks the core for messages and sends them. It also serves the REST
    API and starts the health checker. Configuration comes from os-ken's CONF (set by
    controllers.run): vpc_config (fabric.json), vpc_rest_host, vpc_rest_port.
"""

from __future__ import annotations

import logging

from os_ken import cfg
from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import (
    CONFIG_DISPATCHER,
    DEAD_DISPATCHER,
    MAIN_DISPATCHER,
    set_ev_cls,
)
from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_3

from controllers.health import FABRIC_WAIT_MAX_S, wait_until
from controllers.rest import RestApi
from controllers.service import VpcService

# How often due timers (delayed registrations and deregistrations, draining ends) are run.
TICK_S = 0.1

CONF = cfg.CONF
CONF.register_opts([
    cfg.StrOpt("vpc-config", default="fabric.json", help="the fabric config (fabric.json)"),
    cfg.StrOpt("vpc-rest-host", default="127.0.0.1", help="REST API listen address"),
    cfg.IntOpt("vpc-rest-port", default=18080, help="REST API listen port"),
])

LOG = logging.getLogger("cnlb.vpc")


class VpcController(app_manager.OSKenApp):
    """The VPC router, ARP responder and cloud load balancer, driven by fabric.json.

    service: the VpcService that holds the state and does the work
    """

    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.service = VpcService.from_config(CONF.vpc_config)
        # Before the OpenFlow listener opens: the testbed starts the switches once it does.
        self.service.warm_up()

    def start(self):
        thread = super().start()
        self.threads.append(hub.spawn(self._serve_rest))
        self.threads.append(hub.spawn(self._tick))
        self.threads.append(hub.spawn(self._start_checker))
        return thread

    def _start_checker(self):
        # The first checks once every switch is programmed (see health.wait_until).
        if not wait_until(self.service.ready, FABRIC_WAIT_MAX_S, hub.sleep):
            LOG.warning("health checks start with switches %s not programmed",
                        self.service.waiting_for())
        self.service.start_checker()

    def stop(self):
        self.service.checker.stop()
        super().stop()

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def switch_features_handler(self, ev):
        # No port-desc request here: os-ken's ofp_handler sends one on every features reply,
        # and a second would program the switch twice.
        self.service.on_features(ev.msg.datapath)

    @set_ev_cls(ofp_event.EventOFPPortDescStatsReply, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def port_desc_handler(self, ev):
        dp = ev.msg.datapath
        ports = {p.name.decode(errors="replace"): p.port_no for p in ev.msg.body}
        self.service.on_port_desc(dp, ports, bool(ev.msg.flags & dp.ofproto.OFPMPF_REPLY_MORE))

    @set_ev_cls(ofp_event.EventOFPBarrierReply, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def barrier_reply_handler(self, ev):
        self.service.on_barrier(ev.msg.datapath, ev.msg.xid)

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def error_handler(self, ev):
        msg = ev.msg
        self.service.on_error(msg.datapath, msg.xid, msg.type, msg.code)

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def port_status_handler(self, ev):
        name = ev.msg.desc.name.decode(errors="replace")
        self.service.on_port_status(ev.msg.datapath, name, ev.msg.reason)

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def packet_in_handler(self, ev):
        msg = ev.msg
        if msg.reason == msg.datapath.ofproto.OFPR_INVALID_TTL:
            self.service.on_invalid_ttl(msg.datapath, msg.match["in_port"], msg.data,
                                        msg.match.get("reg0", 0))

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def state_change_handler(self, ev):
        if ev.state == DEAD_DISPATCHER:
            self.service.on_disconnect(ev.datapath)

    def _tick(self):
        while True:
            hub.sleep(TICK_S)
            try:
                self.service.on_tick()
            except Exception:                 # a bug: log it, keep the timers running
                LOG.exception("timers failed")

    def _serve_rest(self):
        host, port = CONF.vpc_rest_host, CONF.vpc_rest_port
        LOG.info("REST API on http://%s:%d/v1/", host, port)
        hub.WSGIServer((host, port), RestApi(self.service)).serve_forever()
