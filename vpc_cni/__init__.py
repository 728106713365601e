"""vpc-cni: pods addressed straight from the VPC (Neutron subnets) on OpenStack nodes."""
