#!/usr/bin/env bash
# Builds the demo's Vagrant box (libvirt, qcow2) from Debian packages alone, as root:
#   build-box.sh OUT.box
# Debian 12 with the bookworm-backports kernel (6.12): the tc program attaches through TCX,
# which 6.1 lacks. `cargo xtask vagrant` calls this once and caches the result.
set -euo pipefail

out=${1:?usage: build-box.sh OUT.box}
mirror=${MIRROR:-http://deb.debian.org/debian}
work=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-box.XXXXXX")
mnt=$work/root
loop=
cleanup() {
  set +e
  for m in dev/pts dev proc sys; do umount "$mnt/$m" 2>/dev/null; done
  umount "$mnt" 2>/dev/null
  [ -n "$loop" ] && { partx -d "$loop" 2>/dev/null; losetup -d "$loop"; }
  rm -rf "$work"
}
trap cleanup EXIT

step() { echo "build-box: $* ($SECONDS s)" >&2; }

# A raw disk with one bootable ext4 partition, on a loop device (`partx -a` makes the
# partition node: `losetup -P` does not here).
truncate -s 8G "$work/disk.raw"
echo 'type=83, bootable' | sfdisk -q "$work/disk.raw"
loop=$(losetup -f --show "$work/disk.raw")
partx -a "$loop"
part=${loop}p1
mkfs.ext4 -q -L root "$part"
uuid=$(blkid -s UUID -o value "$part")
mkdir -p "$mnt"
mount "$part" "$mnt"

step "debootstrap bookworm"
debootstrap --variant=minbase \
  --include=systemd-sysv,libpam-systemd,dbus,openssh-server,sudo,curl,iproute2,ifupdown,isc-dhcp-client,python3,grub-pc,ca-certificates \
  bookworm "$mnt" "$mirror" >"$work/debootstrap.log" 2>&1 || { tail -30 "$work/debootstrap.log"; exit 1; }

for m in dev dev/pts proc sys; do mount --bind "/$m" "$mnt/$m"; done
echo "deb $mirror bookworm-backports main" > "$mnt/etc/apt/sources.list.d/backports.list"
step "kernel from bookworm-backports"
chroot "$mnt" sh -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends -t bookworm-backports linux-image-amd64' \
  >"$work/kernel.log" 2>&1 || { tail -30 "$work/kernel.log"; exit 1; }

step "boot loader, network, user vagrant"
cat > "$mnt/etc/default/grub" <<EOF
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="net.ifnames=0 console=ttyS0"
GRUB_TERMINAL=console
EOF
chroot "$mnt" grub-install --target=i386-pc "$loop" >/dev/null 2>&1
chroot "$mnt" update-grub >/dev/null 2>&1
# No udev here: update-grub names the loop partition; the VM's disk is found by UUID.
sed -i "s|root=$part|root=UUID=$uuid|g" "$mnt/boot/grub/grub.cfg"
echo "UUID=$uuid / ext4 errors=remount-ro 0 1" > "$mnt/etc/fstab"
printf 'auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet dhcp\n' > "$mnt/etc/network/interfaces"
echo portcullis > "$mnt/etc/hostname"
chroot "$mnt" useradd -m -s /bin/bash vagrant
echo 'vagrant:vagrant' | chroot "$mnt" chpasswd
echo 'vagrant ALL=(ALL) NOPASSWD: ALL' > "$mnt/etc/sudoers.d/vagrant"
install -d -m 700 -o 1000 -g 1000 "$mnt/home/vagrant/.ssh"
key=$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub | head -1)
install -m 600 -o 1000 -g 1000 "$key" "$mnt/home/vagrant/.ssh/authorized_keys"
# Each VM makes its own machine id (and DHCP client id) on first boot.
: > "$mnt/etc/machine-id"
rm -f "$mnt/var/lib/dbus/machine-id"
chroot "$mnt" apt-get clean

for m in dev/pts dev proc sys; do umount "$mnt/$m"; done
umount "$mnt"
partx -d "$loop"; losetup -d "$loop"; loop=

step "qcow2 and box"
qemu-img convert -c -O qcow2 "$work/disk.raw" "$work/box.img"
echo '{"provider":"libvirt","format":"qcow2","virtual_size":8}' > "$work/metadata.json"
cat > "$work/Vagrantfile" <<'EOF'
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.driver = "kvm"
  end
end
EOF
# box.img is compressed qcow2 already: a plain tar (vagrant reads both).
tar -C "$work" -cf "$out.tmp" metadata.json box.img Vagrantfile
mv "$out.tmp" "$out"
step "box ready: $out ($(du -h "$out" | cut -f1))"
