#!/usr/bin/env bash
# The Vagrant VM of vagrant/Vagrantfile, booted for real, on a machine that cannot download boxes.
#
#   scripts/vagrant-box.sh check    `make vagrant-check`: from a clean clone of this checkout, build
#                                   and add the box if missing, start libvirt, `vagrant up` (set-up,
#                                   make test, make demo inside), destroy, stop what it started
#   scripts/vagrant-box.sh build    build a libvirt box of Debian 12 into $NA_BOX_DIR (~2 min)
#   scripts/vagrant-box.sh add      `vagrant box add` it under the Vagrantfile's box name
#   scripts/vagrant-box.sh daemons  start virtlogd and libvirtd if they are not running
#   scripts/vagrant-box.sh stop     stop the daemons this script started
#
# The box is what the public debian/bookworm64 box is, made here: Debian 12 (priority "important")
# with linux-image-amd64, openssh-server, sudo, rsync, ifupdown and a DHCP client; a 'vagrant'
# user with Vagrant's insecure public key and passwordless sudo; GRUB (BIOS) on one ext4
# partition; serial console. No make and no build tools, as in the public box: scripts/setup.sh
# installs what the project needs. Users who can download boxes never need this script.
#
# Settings (environment): NA_BOX_DIR (/var/lib/node-agent-vagrant), NA_BOX_SIZE (20G),
# NA_MIRROR and NA_SECURITY_MIRROR (this machine's, from its apt sources).
# This machine has no systemd: the daemons are started by hand, under `nice -n 10` so the VM's
# qemu (their child) yields to other work on the machine.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${NA_BOX_DIR:-/var/lib/node-agent-vagrant}
BOX_FILE=$WORK/debian-12-libvirt.box
BOX_NAME=$(sed -n 's/^ *config\.vm\.box *= *"\([^"]*\)".*/\1/p' "$ROOT/vagrant/Vagrantfile")
SIZE=${NA_BOX_SIZE:-20G}
SOURCES=/etc/apt/sources.list.d/debian.sources
MIRROR=${NA_MIRROR:-$(awk '/^URIs:/{print $2; exit}' "$SOURCES" 2>/dev/null || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY=${NA_SECURITY_MIRROR:-$(awk '/^URIs:/ && /security/{print $2; exit}' "$SOURCES" 2>/dev/null || true)}
SECURITY=${SECURITY:-http://deb.debian.org/debian-security}

log() { echo "vagrant-box: $*" >&2; }

[ "$(id -u)" = 0 ] || { log "must run as root (loop devices, libvirt)"; exit 1; }

tools() {
    local pkgs=(vagrant vagrant-libvirt libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients
                dnsmasq-base qemu-system-x86 qemu-utils mmdebstrap grub-pc-bin grub2-common e2fsprogs fdisk)
    local missing=()
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

build() {
    tools
    local t0=$SECONDS key
    key=$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub 2>/dev/null | head -n 1)
    [ -n "$key" ] || { log "Vagrant's insecure public key not found"; exit 1; }
    mkdir -p "$WORK" && cd "$WORK"

    # 1. The root filesystem, into a directory (about a minute: ~200 packages from the mirror).
    if ! ls rootfs/boot/vmlinuz-* >/dev/null 2>&1; then
        rm -rf rootfs
        mmdebstrap --variant=important --components=main --format=directory \
            --include=linux-image-amd64,systemd-sysv,openssh-server,sudo,rsync,ifupdown,isc-dhcp-client,ca-certificates \
            bookworm rootfs \
            "deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" "deb $SECURITY bookworm-security main"
    fi
    log "root filesystem: $(( SECONDS - t0 )) s"

    # 2. A sparse disk with one bootable partition from sector 2048. The partition gets a loop
    #    device of its own, by offset: the loop driver here makes no partition devices (losetup -P).
    rm -f disk.raw && truncate -s "$SIZE" disk.raw
    printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q disk.raw
    local offset=$(( 2048 * 512 )) loop uuid kver
    loop=$(losetup -f --show -o "$offset" --sizelimit "$(( $(stat -c %s disk.raw) - offset ))" disk.raw)
    # shellcheck disable=SC2064  # the loop device is known now
    trap "umount '$WORK/mnt' 2>/dev/null || true; losetup -d '$loop' 2>/dev/null || true" EXIT
    mkfs.ext4 -q -L root -O ^metadata_csum_seed "$loop"  # bookworm's GRUB 2.06 cannot read that feature
    uuid=$(blkid -s UUID -o value "$loop")
    mkdir -p mnt && mount "$loop" mnt
    cp -a rootfs/. mnt/

    # 3. What Vagrant expects of a box: the vagrant user, its key, sudo, sshd, DHCP on eth0.
    echo "UUID=$uuid / ext4 errors=remount-ro 0 1" > mnt/etc/fstab
    echo debian-12 > mnt/etc/hostname
    printf '127.0.0.1\tlocalhost\n127.0.1.1\tdebian-12\n' > mnt/etc/hosts
    printf 'auto lo\niface lo inet loopback\n\nallow-hotplug eth0\niface eth0 inet dhcp\n' > mnt/etc/network/interfaces
    chroot mnt useradd -m -s /bin/bash -G sudo vagrant
    echo 'vagrant:vagrant' | chroot mnt chpasswd
    install -d -m 700 -o 1000 -g 1000 mnt/home/vagrant/.ssh
    install -m 600 -o 1000 -g 1000 "$key" mnt/home/vagrant/.ssh/authorized_keys
    echo 'vagrant ALL=(ALL) NOPASSWD: ALL' > mnt/etc/sudoers.d/vagrant && chmod 440 mnt/etc/sudoers.d/vagrant
    echo 'UseDNS no' > mnt/etc/ssh/sshd_config.d/vagrant.conf
    # Host keys are made at first boot, so that no two VMs of this box share them.
    rm -f mnt/etc/ssh/ssh_host_*
    printf '%s\n' '[Unit]' 'Description=SSH host keys, made at first boot' 'Before=ssh.service' \
        'ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key' '[Service]' 'Type=oneshot' \
        'ExecStart=/usr/bin/ssh-keygen -A' '[Install]' 'WantedBy=multi-user.target' \
        > mnt/etc/systemd/system/ssh-hostkeys.service
    mkdir -p mnt/etc/systemd/system/multi-user.target.wants
    ln -sf /etc/systemd/system/ssh-hostkeys.service mnt/etc/systemd/system/multi-user.target.wants/
    : > mnt/etc/machine-id
    kver=$(ls mnt/lib/modules | sort -V | tail -n 1)

    # 4. GRUB for BIOS boot, written by hand (grub-install wants the partition device): core.img
    #    with what it needs to find and read the root partition goes in the gap after the MBR,
    #    boot.img's code in the MBR (it loads sector 1 by default), modules and grub.cfg in /boot/grub.
    mkdir -p mnt/boot/grub/i386-pc
    cp /usr/lib/grub/i386-pc/*.mod /usr/lib/grub/i386-pc/*.lst mnt/boot/grub/i386-pc/
    cat > mnt/boot/grub/grub.cfg <<EOF
set timeout=1
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
menuentry 'Debian 12 ($kver)' {
    search --no-floppy --fs-uuid --set=root $uuid
    linux /boot/vmlinuz-$kver root=UUID=$uuid ro console=tty0 console=ttyS0,115200n8 net.ifnames=0 biosdevname=0
    initrd /boot/initrd.img-$kver
}
EOF
    umount mnt && losetup -d "$loop" && trap - EXIT
    grub-mkimage -O i386-pc -o core.img -p '(hd0,msdos1)/boot/grub' \
        biosdisk part_msdos ext2 search search_fs_uuid normal linux configfile echo serial terminal
    [ "$(stat -c %s core.img)" -lt $(( 2047 * 512 )) ] || { log "core.img does not fit before the partition"; exit 1; }
    dd if=/usr/lib/grub/i386-pc/boot.img of=disk.raw bs=440 count=1 conv=notrunc status=none
    dd if=core.img of=disk.raw bs=512 seek=1 conv=notrunc status=none

    # 5. The box: the disk as qcow2 and its metadata. The driver (kvm or qemu) is not fixed here:
    #    vagrant/Vagrantfile picks it for the host it runs on.
    qemu-img convert -O qcow2 disk.raw box.img && rm -f disk.raw core.img
    local gib
    gib=$(( $(qemu-img info --output=json box.img | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])') >> 30 ))
    printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %s}\n' "$gib" > metadata.json
    tar -czf "$BOX_FILE" metadata.json box.img && rm -f box.img metadata.json
    log "box $BOX_FILE ($(du -h "$BOX_FILE" | cut -f1)) in $(( SECONDS - t0 )) s"
}

add() {
    [ -e "$BOX_FILE" ] || build
    vagrant box add --force --name "$BOX_NAME" --provider libvirt "$BOX_FILE"
}

box_added() { vagrant box list 2>/dev/null | grep -q "^$BOX_NAME .*libvirt"; }

daemons() {
    tools
    mkdir -p /run/libvirt "$WORK"
    local d
    for d in virtlogd libvirtd; do
        if [ -s "/run/$d.pid" ] && kill -0 "$(cat "/run/$d.pid")" 2>/dev/null; then
            continue
        fi
        nice -n 10 "$d" -d
        echo "$d" >> "$WORK/started"
    done
    for _ in $(seq 50); do
        virsh -c qemu:///system version >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    log "libvirtd does not answer"; exit 1
}

stop() {
    # Only what daemons() started, by the pids they wrote.
    [ -e "$WORK/started" ] || return 0
    virsh -c qemu:///system net-destroy vagrant-libvirt >/dev/null 2>&1 || true
    local d
    for d in $(tac "$WORK/started"); do
        [ -s "/run/$d.pid" ] && kill "$(cat "/run/$d.pid")" 2>/dev/null || true
    done
    rm -f "$WORK/started"
}

trust_host_cas() {  # trust_host_cas DIR: the host's own CAs into the VM, for pip behind a TLS proxy
    local cas=(/usr/local/share/ca-certificates/*.crt) c
    [ -e "${cas[0]}" ] || return 0
    log "the host trusts CAs of its own (${cas[*]}); the VM gets them too"
    for c in "${cas[@]}"; do
        (cd "$1" && vagrant upload "$c" "/tmp/host-ca-$(basename "$c")" >/dev/null)
    done
    # pip uses its own CA bundle unless told to use the system's, which now has the host's CAs.
    (cd "$1" && vagrant ssh -c 'sudo sh -c "cp /tmp/host-ca-*.crt /usr/local/share/ca-certificates/ \
        && update-ca-certificates >/dev/null && printf \"[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n\" \
        > /etc/pip.conf"')
}

check() {
    local t0=$SECONDS copy rc=0 t
    copy=$(mktemp -d /tmp/node-agent-vagrant.XXXXXX)
    local vm="$copy/node-agent/vagrant" logf=$WORK/check.log
    mkdir -p "$WORK" && : > "$logf"
    # shellcheck disable=SC2064
    trap "(cd '$vm' 2>/dev/null && vagrant destroy -f >>'$logf' 2>&1) || true; stop; rm -rf '$copy'" EXIT
    git clone -q "$ROOT" "$copy/node-agent"   # committed files only, as a user's checkout
    log "clean clone of $(git -C "$ROOT" rev-parse --short HEAD) in $copy; log in $logf"
    t=$SECONDS
    if ! box_added; then add >> "$logf" 2>&1; fi
    local t_box=$(( SECONDS - t ))
    daemons
    t=$SECONDS
    (cd "$vm" && vagrant up --provider=libvirt --no-provision) 2>&1 | tee -a "$logf" || rc=$?
    local t_up=$(( SECONDS - t ))
    t=$SECONDS
    if [ "$rc" = 0 ]; then
        trust_host_cas "$vm" 2>&1 | tee -a "$logf"
        (cd "$vm" && vagrant provision) 2>&1 | tee -a "$logf" || rc=$?
    fi
    local t_prov=$(( SECONDS - t ))
    t=$SECONDS
    (cd "$vm" && vagrant destroy -f) >> "$logf" 2>&1 || true
    stop
    # shellcheck disable=SC2064
    trap "rm -rf '$copy'" EXIT
    log "box ${t_box} s, boot ${t_up} s, provision (set-up, make test, make demo) ${t_prov} s," \
        "destroy $(( SECONDS - t )) s"
    local total=$(( SECONDS - t0 ))
    log "vagrant-check: $([ "$rc" = 0 ] && echo PASSED || echo "FAILED (exit $rc)") in $(( total / 60 )) min $(( total % 60 )) s"
    return "$rc"
}

case ${1:-check} in
    check|build|add|daemons|stop) "${1:-check}" ;;
    *) log "usage: $0 check|build|add|daemons|stop"; exit 2 ;;
esac
