#!/bin/sh
# keel-pki.sh — a CA and host certificates for keeld's peer channel (mutual TLS).
#
#   scripts/keel-pki.sh init DIR                 make DIR/ca.pem and DIR/ca-key.pem (once per fleet)
#   scripts/keel-pki.sh host DIR NAME [ADDR...]  make DIR/NAME/{ca.pem,cert.pem,key.pem} signed by
#                                                the CA, with NAME and each ADDR (DNS name or IP)
#                                                as subject alternative names
#
# Then on host NAME: keeld --listen tls://ADDR:PORT --tls-dir DIR/NAME
# Keep ca-key.pem off the hosts. Only the openssl command-line tool is needed.
set -eu

usage() { sed -n '2,12p' "$0" >&2; exit 2; }
[ $# -ge 2 ] || usage
command=$1 dir=$2
umask 077

case "$command" in
init)
    mkdir -p "$dir"
    [ -e "$dir/ca.pem" ] && { echo "keel-pki: $dir/ca.pem exists; not replacing it" >&2; exit 1; }
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
        -subj "/CN=keel fleet CA" -keyout "$dir/ca-key.pem" -out "$dir/ca.pem" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
    echo "$dir/ca.pem"
    ;;
host)
    [ $# -ge 3 ] || usage
    name=$3; shift 3
    [ -e "$dir/ca.pem" ] && [ -e "$dir/ca-key.pem" ] || { echo "keel-pki: no CA in $dir (run init first)" >&2; exit 1; }
    san="DNS:$name"
    for address in "$@"; do
        case "$address" in
        *[!0-9.:a-fA-F]*) san="$san,DNS:$address" ;;
        *) san="$san,IP:$address" ;;
        esac
    done
    out="$dir/$name"
    mkdir -p "$out"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$name" \
        -keyout "$out/key.pem" -out "$out/req.pem" 2>/dev/null
    extensions="$out/ext.cnf"
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n' "$san" > "$extensions"
    openssl x509 -req -in "$out/req.pem" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" -CAcreateserial \
        -days 825 -extfile "$extensions" -out "$out/cert.pem" 2>/dev/null
    cp "$dir/ca.pem" "$out/ca.pem"
    rm -f "$out/req.pem" "$extensions"
    echo "$out"
    ;;
*)
    usage
    ;;
esac
