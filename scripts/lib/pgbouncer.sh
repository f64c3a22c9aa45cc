# PgBouncer for the test that runs the platform through a transaction pooler. Sourced.
#
# Debian 12's package is PgBouncer 1.18, which cannot serve sqlx in transaction mode:
# sqlx prepares every statement, and only 1.21 and later (`max_prepared_statements`)
# carry prepared statements from one server session to the next. So this builds
# Debian 13's current source package (upstream's release plus Debian's security patches)
# from Debian's archive, checked as apt checks what it fetches: the release file's
# signature against the Debian archive keyring, the source index against the release
# file, each file against the index. Built once into .tools/, and any binary found
# there is used only if it is 1.21 or later.

PGBOUNCER_SUITE=trixie

# Whether $1 is a pgbouncer of 1.21 or later (named prepared statements in transaction mode).
pgbouncer_carries_prepared_statements() {
    local version
    version=$("$1" --version 2>/dev/null | sed -n 's/^PgBouncer \([0-9]*\.[0-9]*\).*/\1/p')
    [ -n "$version" ] && [ "${version%%.*}" -ge 1 ] && { [ "${version%%.*}" -gt 1 ] || [ "${version#*.}" -ge 21 ]; }
}

# Prints the path of a pgbouncer binary of 1.21 or later, building it if need be.
install_pgbouncer() {
    local existing
    for existing in .tools/pgbouncer-*/bin/pgbouncer; do
        [ -x "$existing" ] && pgbouncer_carries_prepared_statements "$existing" && { echo "$PWD/$existing"; return 0; }
    done
    echo "==> building PgBouncer from Debian's $PGBOUNCER_SUITE source package into .tools/" >&2
    local missing=()
    dpkg -s libevent-dev >/dev/null 2>&1 || missing+=(libevent-dev)
    dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
    dpkg -s pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
    if [ ${#missing[@]} -gt 0 ]; then
        [ "$(id -u)" -eq 0 ] || { echo "install ${missing[*]} (needed to build PgBouncer)" >&2; return 1; }
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2 ||
            { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2; }
    fi
    local work archive=http://deb.debian.org/debian repo=$PWD
    work=$(mktemp -d)
    (
        set -euo pipefail
        cd "$work"
        curl -fsS -m 60 -o InRelease "$archive/dists/$PGBOUNCER_SUITE/InRelease"
        gpgv --keyring /usr/share/keyrings/debian-archive-keyring.gpg --output Release InRelease 2>/dev/null
        curl -fsS -m 120 -o Sources.xz "$archive/dists/$PGBOUNCER_SUITE/main/source/Sources.xz"
        # The release file lists "sha256 size path" for each index.
        local want
        want=$(awk '/^SHA256:/ {s=1; next} /^[^ ]/ {s=0} s && $3 == "main/source/Sources.xz" {print $1}' Release)
        echo "$want  Sources.xz" | sha256sum -c --quiet
        xz -dc Sources.xz | awk -v RS= '/(^|\n)Package: pgbouncer\n/' > stanza
        local directory
        directory=$(awk '/^Directory:/ {print $2}' stanza)
        awk '/^Checksums-Sha256:/ {s=1; next} /^[^ ]/ {s=0} s {print $1 "  " $3}' stanza > sums
        while read -r _ file; do
            curl -fsS -m 120 -o "$file" "$archive/$directory/$file"
        done < sums
        sha256sum -c --quiet sums
        local orig version
        orig=$(awk '$2 ~ /\.orig\.tar\./ {print $2}' sums)
        version=${orig#pgbouncer_}
        version=${version%.orig.tar.*}
        mkdir src
        tar xf "$orig" -C src --strip-components=1
        tar xf "$(awk '$2 ~ /\.debian\.tar\./ {print $2}' sums)" -C src
        (cd src && while read -r patch; do
            case "$patch" in ''|'#'*) continue ;; esac
            patch -p1 -s < "debian/patches/$patch"
        done < debian/patches/series)
        local prefix=$repo/.tools/pgbouncer-$version
        (cd src && ./configure --prefix="$prefix" --without-cares --without-pam --without-systemd &&
            make -j"$(nproc)" && make install) > build.log 2>&1 || { tail -30 build.log >&2; exit 1; }
    ) || { rm -rf "$work"; echo "building PgBouncer failed" >&2; return 1; }
    rm -rf "$work"
    for existing in .tools/pgbouncer-*/bin/pgbouncer; do
        [ -x "$existing" ] && pgbouncer_carries_prepared_statements "$existing" && { echo "$PWD/$existing"; return 0; }
    done
    echo "Debian's $PGBOUNCER_SUITE source package built no PgBouncer of 1.21 or later" >&2
    return 1
}
