"""ipam: the controller that gives every VM one stable IP and MAC, recorded in its status."""
