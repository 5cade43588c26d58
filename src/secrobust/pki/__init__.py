"""Key material: the key ceremony (CAs, keys, signing) and party names, trust rules and TLS identities."""
