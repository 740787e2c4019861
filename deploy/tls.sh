#!/usr/bin/env bash
# Certificates and keys for TLS and SuperNode authentication (deploy/tls.yml uses them):
#   ca.crt, ca.key                   a private certificate authority (keep ca.key to yourself)
#   superlink.crt, superlink.key     the SuperLink's certificate, signed by the CA, valid for the
#                                    names clients use: superlink (the compose service), localhost,
#                                    127.0.0.1, and every --san given
#   supernode-N.key, supernode-N.key.pub   one EC key pair per SuperNode (ssh-keygen -t ecdsa -b 384);
#                                    register each .pub with `flwr supernode register`
#
#   deploy/tls.sh                    # 3 SuperNodes, into deploy/certs/ (or $FEDMNIST_CERTS)
#   deploy/tls.sh --nodes 10 --san superlink.example.org --san 10.0.0.5
#   deploy/tls.sh --check            # only check what is there; one line per problem
#   deploy/tls.sh --force            # make everything again (then register the new keys)
#
# Idempotent: files already there are kept; missing ones are added; the SuperLink's
# certificate is made again when it lacks a requested name. Needs openssl and ssh-keygen.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${FEDMNIST_CERTS:-deploy/certs} nodes=3 force=0 check_only=0
sans=(DNS:superlink DNS:localhost IP:127.0.0.1)
while (($#)); do
    case $1 in
        --nodes) nodes=$2; shift ;;
        --dir) dir=$2; shift ;;
        --san)
            if [[ $2 =~ ^[0-9.]+$ || $2 == *:*:* ]]; then sans+=("IP:$2"); else sans+=("DNS:$2"); fi
            shift ;;
        --force) force=1 ;;
        --check) check_only=1 ;;
        -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "tls.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[[ $nodes =~ ^[0-9]+$ && $nodes -ge 1 ]] || { echo "tls.sh: --nodes must be a whole number >= 1, not '$nodes'" >&2; exit 2; }
for tool in openssl ssh-keygen; do
    command -v "$tool" >/dev/null || { echo "tls.sh: $tool is missing: install openssl and openssh-client" >&2; exit 1; }
done

pub_of_cert() { openssl x509 -in "$1" -noout -pubkey 2>/dev/null; }
pub_of_key() { openssl pkey -in "$1" -pubout 2>/dev/null; }
cert_sans() { openssl x509 -in "$1" -noout -ext subjectAltName 2>/dev/null | tail -n +2 | tr -d ' ' | tr ',' '\n' | sed 's/^IPAddress:/IP:/'; }

# One line per problem, naming the file and what to do; exit status 1 if there is any.
check() {
    local problems=0 f
    say() { echo "tls.sh: $*" >&2; problems=$((problems + 1)); }
    for f in ca.crt superlink.crt superlink.key; do
        [[ -s $dir/$f ]] || say "$dir/$f is missing: run deploy/tls.sh"
    done
    if [[ -s $dir/superlink.crt && -s $dir/superlink.key ]]; then
        [[ $(pub_of_cert "$dir/superlink.crt") == "$(pub_of_key "$dir/superlink.key")" && -n $(pub_of_key "$dir/superlink.key") ]] \
            || say "$dir/superlink.key does not belong to $dir/superlink.crt: run deploy/tls.sh --force"
    fi
    if [[ -s $dir/superlink.crt && -s $dir/ca.crt ]]; then
        openssl verify -CAfile "$dir/ca.crt" "$dir/superlink.crt" >/dev/null 2>&1 \
            || say "$dir/superlink.crt is not signed by $dir/ca.crt (or has expired): run deploy/tls.sh --force"
        local have
        have=$(cert_sans "$dir/superlink.crt")
        for san in "${sans[@]}"; do
            grep -qxF "$san" <<<"$have" || say "$dir/superlink.crt is not valid for ${san#*:}: run deploy/tls.sh again with the same --san options"
        done
    fi
    for ((i = 0; i < nodes; i++)); do
        f=$dir/supernode-$i.key
        if [[ ! -s $f ]]; then
            say "$f is missing: run deploy/tls.sh --nodes $nodes"
        elif [[ ! -s $f.pub ]]; then
            say "$f.pub is missing: ssh-keygen -y -f $f > $f.pub"
        elif [[ $(ssh-keygen -y -f "$f" 2>/dev/null | cut -d' ' -f1-2) != "$(cut -d' ' -f1-2 "$f.pub")" ]]; then
            say "$f.pub is not the public half of $f: ssh-keygen -y -f $f > $f.pub, then register it again"
        fi
    done
    return $((problems > 0))
}

if ((check_only)); then
    check && echo "tls.sh: $dir holds a CA, the SuperLink's certificate and key, and $nodes SuperNode key pairs; all match"
    exit
fi

mkdir -p "$dir"
chmod 700 "$dir"
umask 077
if ((force)); then
    rm -f "$dir"/ca.crt "$dir"/ca.key "$dir"/superlink.crt "$dir"/superlink.key "$dir"/supernode-*.key "$dir"/supernode-*.key.pub
fi

if [[ ! -s $dir/ca.crt || ! -s $dir/ca.key ]]; then
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:secp384r1 -nodes -days 3650 \
        -subj "/CN=fedavg-mnist deployment CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
    rm -f "$dir/superlink.crt"  # a new CA: the SuperLink's certificate must be signed again
    echo "tls.sh: made a new CA: $dir/ca.crt"
fi

remake=0
if [[ ! -s $dir/superlink.crt || ! -s $dir/superlink.key ]]; then
    remake=1
else
    have=$(cert_sans "$dir/superlink.crt")
    for san in "${sans[@]}"; do grep -qxF "$san" <<<"$have" || remake=1; done
    openssl verify -CAfile "$dir/ca.crt" "$dir/superlink.crt" >/dev/null 2>&1 || remake=1
    [[ $(pub_of_cert "$dir/superlink.crt") == "$(pub_of_key "$dir/superlink.key")" ]] || remake=1
fi
if ((remake)); then
    san_list=$(IFS=,; echo "${sans[*]}")
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:secp384r1 -nodes -subj "/CN=superlink" \
        -keyout "$dir/superlink.key" -out "$dir/superlink.csr" 2>/dev/null
    openssl x509 -req -in "$dir/superlink.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days 825 -out "$dir/superlink.crt" \
        -extfile <(printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' "$san_list") \
        2>/dev/null
    rm -f "$dir/superlink.csr"
    echo "tls.sh: made the SuperLink's certificate for ${san_list//DNS:/}: $dir/superlink.crt"
fi

made=()
for ((i = 0; i < nodes; i++)); do
    f=$dir/supernode-$i.key
    if [[ ! -s $f ]]; then
        rm -f "$f.pub"
        ssh-keygen -q -t ecdsa -b 384 -N "" -C "supernode-$i" -f "$f"
        made+=("supernode-$i")
    elif [[ ! -s $f.pub ]]; then
        ssh-keygen -y -f "$f" >"$f.pub"
    fi
done
((${#made[@]})) && echo "tls.sh: made key pairs for ${made[*]}: register them (docs/deployment.md)"
chmod 644 "$dir"/*.crt "$dir"/*.pub
check
echo "tls.sh: $dir is ready"
