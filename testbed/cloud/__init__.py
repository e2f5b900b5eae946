"""The cloud parts: the VPC fabric and the cloud load balancers."""
