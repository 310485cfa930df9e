"""What leaves the gateway for other mail servers: the next hop (SMTP relay or a folder) and
DKIM signing with its keys. Shared by the relay and the notices; none of it knows a stage."""
