"""The VPC controller: an os-ken (Ryu API) app that plays a cloud VPC and its load balancer.

Modules:
    vpc_core: the pure core -- fabric config in, OpenFlow 1.3 messages out (no I/O, no event loop)
    vpc_app:  the os-ken app -- one small handler per OpenFlow/REST event, calling the core
    run:      the launcher (`python -m controllers.run ...`) and the health-checker child
"""

__version__ = "0.1.0"
