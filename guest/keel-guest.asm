; keel-guest — a tiny multiboot (v1) test guest for Keel.
;
; Prints the CPUID words the guest sees to COM1 so tests can compare what a guest
; observes before and after save/restore, snapshot revert and migration. See README.md
; for the output format. Build: `nasm -f bin -o keel-guest.elf keel-guest.asm`.
;
; The file is a hand-written ELF32 executable (one PT_LOAD segment at 1 MiB), so no
; linker is needed and QEMU's multiboot loader takes its ELF path.

BITS 32
ORG 0x100000

LOAD_ADDR       equ 0x100000
MB_MAGIC        equ 0x1BADB002
MB_FLAGS        equ 0x00000003          ; page-align modules, want memory info
MB_BOOT_MAGIC   equ 0x2BADB002          ; what the loader leaves in EAX
COM1            equ 0x3F8
PIT_PER_TICK    equ 18                  ; PIT at its slowest (~18.2 Hz): 18 IRQs ≈ 1 s
TICKS_PER_BLOCK equ 10                  ; re-print the CPUID block every 10 ticks
FILL_BASE       equ 0x200000            ; fill starts at 2 MiB, above the image
PCI_ADDRESS     equ 0xCF8
PCI_DATA        equ 0xCFC
PIIX4_PM        equ 0x80000B00          ; PCI 00:01.3, QEMU's PIIX4 power management
PIIX4_PM_ID     equ 0x71138086          ; its device and vendor ids
PMBASE_REG      equ 0x40                ; bits 15:6 hold the I/O base of its registers
PM1_EN          equ 2                   ; PM1 enable, from the base (PM1 status is at 0)
PM1_CNT         equ 4                   ; PM1 control
PWRBTN          equ 1 << 8              ; power button status / enable
SLP_S5          equ 0x2000              ; SLP_EN with SLP_TYP 0: soft off on QEMU's PIIX4

; ---------------------------------------------------------------- ELF32 header
ehdr:
        db 0x7F, "ELF", 1, 1, 1, 0      ; ELFCLASS32, little endian, version 1, SysV
        times 8 db 0
        dw 2                            ; e_type: ET_EXEC
        dw 3                            ; e_machine: EM_386
        dd 1                            ; e_version
        dd start                        ; e_entry
        dd phdr - ehdr                  ; e_phoff
        dd 0                            ; e_shoff: no sections
        dd 0                            ; e_flags
        dw ehdr_size                    ; e_ehsize
        dw phdr_size                    ; e_phentsize
        dw 1                            ; e_phnum
        dw 40                           ; e_shentsize
        dw 0                            ; e_shnum
        dw 0                            ; e_shstrndx
ehdr_size equ $ - ehdr

phdr:
        dd 1                            ; p_type: PT_LOAD
        dd 0                            ; p_offset
        dd LOAD_ADDR                    ; p_vaddr
        dd LOAD_ADDR                    ; p_paddr
        dd file_end - ehdr              ; p_filesz
        dd bss_end - ehdr               ; p_memsz (the loader zeroes the rest)
        dd 7                            ; p_flags: RWX
        dd 0x1000                       ; p_align
phdr_size equ $ - phdr

; ------------------------------------------------------------ multiboot header
align 4
mb_header:
        dd MB_MAGIC
        dd MB_FLAGS
        dd -(MB_MAGIC + MB_FLAGS)

; ---------------------------------------------------------------------- data
align 8
gdt:
        dq 0
        dq 0x00CF9A000000FFFF           ; 0x08: flat 32-bit code
        dq 0x00CF92000000FFFF           ; 0x10: flat 32-bit data
gdt_end:
gdt_desc:
        dw gdt_end - gdt - 1
        dd gdt
idt_desc:
        dw 256 * 8 - 1
        dd idt

cpuid_leaves:
        dd 0x00000000, 0x00000001, 0x00000006, 0x00000007, 0x80000001
cpuid_leaf_count equ ($ - cpuid_leaves) / 4

s_banner:   db "KEEL-GUEST 1", 10, 0
s_cpuid:    db "CPUID ", 0
s_eax:      db " eax=", 0
s_ebx:      db " ebx=", 0
s_ecx:      db " ecx=", 0
s_edx:      db " edx=", 0
s_filled:   db "FILLED ", 0
s_tick:     db "TICK ", 0
s_fault:    db "FAULT ", 0
s_poweroff: db "POWER OFF", 10, 0
s_fill:     db "fill="
s_fill_len  equ $ - s_fill
s_acpi:     db "acpi"
s_acpi_len  equ $ - s_acpi
hexdigits:  db "0123456789abcdef"

; ---------------------------------------------------------------------- code
start:
        cli
        cld
        mov esp, stack_top
        mov [boot_magic], eax
        mov [boot_info], ebx
        lgdt [gdt_desc]
        jmp 0x08:.flat
.flat:
        mov ax, 0x10
        mov ds, ax
        mov es, ax
        mov fs, ax
        mov gs, ax
        mov ss, ax

        call serial_init
        mov esi, s_banner
        call puts
        call print_cpuid_block

        call parse_fill                 ; EAX = requested MiB (0 = none)
        test eax, eax
        jz .no_fill
        call fill_memory                ; EAX = MiB actually filled
        mov esi, s_filled
        call puts
        call put_dec
        call newline
.no_fill:
        call acpi_init
        call idt_init
        call pic_init
        call pit_init
        mov dx, COM1 + 1                ; IER: interrupt on received data
        mov al, 0x01
        out dx, al

main_loop:
        cli
        call check_power_button
        cmp dword [pit_count], PIT_PER_TICK
        jb .no_tick
        sub dword [pit_count], PIT_PER_TICK
        inc dword [tick]
        mov esi, s_tick
        call puts
        mov eax, [tick]
        call put_dec
        call newline
        mov eax, [tick]
        xor edx, edx
        mov ecx, TICKS_PER_BLOCK
        div ecx
        test edx, edx
        jnz main_loop
        mov byte [reprint], 1
        jmp main_loop
.no_tick:
        cmp byte [reprint], 0
        je .idle
        mov byte [reprint], 0
        call print_cpuid_block
        jmp main_loop
.idle:
        sti                             ; sti's one-instruction shadow: no lost wakeup
        hlt
        jmp main_loop

; ------------------------------------------------------------------- serial
serial_init:
        mov dx, COM1 + 1
        xor al, al
        out dx, al                      ; IER: no interrupts yet
        mov dx, COM1 + 3
        mov al, 0x80
        out dx, al                      ; LCR: DLAB
        mov dx, COM1
        mov al, 1
        out dx, al                      ; divisor 1: 115200 baud
        mov dx, COM1 + 1
        xor al, al
        out dx, al
        mov dx, COM1 + 3
        mov al, 0x03
        out dx, al                      ; 8N1
        mov dx, COM1 + 2
        mov al, 0xC7
        out dx, al                      ; FIFO on, cleared
        mov dx, COM1 + 4
        mov al, 0x0B
        out dx, al                      ; DTR, RTS, OUT2 (OUT2 gates the IRQ line)
        ret

; AL = byte
putc:
        push edx
        push eax
        mov dx, COM1 + 5
.wait:
        in al, dx
        test al, 0x20                   ; THR empty
        jz .wait
        pop eax
        mov dx, COM1
        out dx, al
        pop edx
        ret

; ESI = NUL-terminated string
puts:
        push eax
        push esi
.next:
        lodsb
        test al, al
        jz .done
        call putc
        jmp .next
.done:
        pop esi
        pop eax
        ret

newline:
        push eax
        mov al, 10
        call putc
        pop eax
        ret

; EAX = value, printed as 8 lower-case hex digits
put_hex:
        push eax
        push ebx
        push ecx
        mov ebx, eax
        mov ecx, 8
.next:
        rol ebx, 4
        mov eax, ebx
        and eax, 0x0F
        mov al, [hexdigits + eax]
        call putc
        loop .next
        pop ecx
        pop ebx
        pop eax
        ret

; EAX = value, printed in decimal
put_dec:
        push eax
        push ecx
        push edx
        push esi
        push edi
        mov edi, decbuf_end
        mov byte [edi], 0
        mov ecx, 10
.next:
        xor edx, edx
        div ecx
        add dl, '0'
        dec edi
        mov [edi], dl
        test eax, eax
        jnz .next
        mov esi, edi
        call puts
        pop edi
        pop esi
        pop edx
        pop ecx
        pop eax
        ret

; -------------------------------------------------------------------- CPUID
print_cpuid_block:
        pushad
        xor ebp, ebp
.leaf:
        mov esi, s_cpuid
        call puts
        mov eax, [cpuid_leaves + ebp * 4]
        call put_hex
        mov al, ' '
        call putc
        xor eax, eax
        call put_hex                    ; subleaf
        mov eax, [cpuid_leaves + ebp * 4]
        xor ecx, ecx
        cpuid
        mov [regs + 0], eax
        mov [regs + 4], ebx
        mov [regs + 8], ecx
        mov [regs + 12], edx
        mov esi, s_eax
        call puts
        mov eax, [regs + 0]
        call put_hex
        mov esi, s_ebx
        call puts
        mov eax, [regs + 4]
        call put_hex
        mov esi, s_ecx
        call puts
        mov eax, [regs + 8]
        call put_hex
        mov esi, s_edx
        call puts
        mov eax, [regs + 12]
        call put_hex
        call newline
        inc ebp
        cmp ebp, cpuid_leaf_count
        jb .leaf
        popad
        ret

; ------------------------------------------------------- command line, fill
; EDI = word, EBX = its length. Returns ESI = the byte after the first word of the
; multiboot command line that starts with it, else 0.
find_arg:
        push eax
        push ecx
        push edx
        xor esi, esi
        cmp dword [boot_magic], MB_BOOT_MAGIC
        jne .out
        mov eax, [boot_info]
        test dword [eax], 1 << 2        ; cmdline valid
        jz .out
        mov esi, [eax + 16]
        mov dl, ' '                     ; previous character
.scan:
        mov al, [esi]
        test al, al
        jz .none
        cmp dl, ' '
        jne .advance
        xor ecx, ecx
.cmp:
        mov al, [esi + ecx]
        cmp al, [edi + ecx]
        jne .advance
        inc ecx
        cmp ecx, ebx
        jb .cmp
        add esi, ecx                    ; just after the word
        jmp .out
.advance:
        mov dl, [esi]
        inc esi
        jmp .scan
.none:
        xor esi, esi
.out:
        pop edx
        pop ecx
        pop eax
        ret

; Returns EAX = N from a `fill=N` word of the multiboot command line, else 0.
parse_fill:
        push ebx
        push ecx
        push esi
        push edi
        mov edi, s_fill
        mov ebx, s_fill_len
        call find_arg
        xor eax, eax
        test esi, esi
        jz .out
.digit:
        movzx ecx, byte [esi]
        sub ecx, '0'
        cmp ecx, 9
        ja .out
        cmp eax, 100000                 ; caps the value; the fill clamps to RAM anyway
        jae .skip
        imul eax, eax, 10
        add eax, ecx
.skip:
        inc esi
        jmp .digit
.out:
        pop edi
        pop esi
        pop ecx
        pop ebx
        ret

; ----------------------------------------------------------------------- ACPI
; With `acpi` on the command line and QEMU's PIIX4 power management present (a machine
; with ACPI), enables the power button so that check_power_button sees it pressed.
acpi_init:
        pushad
        mov edi, s_acpi
        mov ebx, s_acpi_len
        call find_arg
        test esi, esi
        jz .out
        mov dx, PCI_ADDRESS
        mov eax, PIIX4_PM
        out dx, eax
        mov dx, PCI_DATA
        in eax, dx
        cmp eax, PIIX4_PM_ID
        jne .out                        ; no ACPI hardware: nothing to listen to
        mov dx, PCI_ADDRESS
        mov eax, PIIX4_PM | PMBASE_REG
        out dx, eax
        mov dx, PCI_DATA
        in eax, dx
        and eax, 0xFFC0
        jz .out
        mov [pm_base], ax
        lea edx, [eax + PM1_EN]
        mov ax, PWRBTN
        out dx, ax
.out:
        popad
        ret

; Polled at every wake-up (the SCI stays masked): when the power button was pressed, say
; so and enter S5, which QEMU reports as a guest-initiated shutdown.
check_power_button:
        push eax
        push edx
        movzx edx, word [pm_base]
        test edx, edx
        jz .out
        in ax, dx                       ; PM1 status
        test ax, PWRBTN
        jz .out
        mov esi, s_poweroff
        call puts
        add edx, PM1_CNT
        mov ax, SLP_S5
        out dx, ax
.halt:
        cli
        hlt
        jmp .halt
.out:
        pop edx
        pop eax
        ret

; EAX = MiB wanted; fills [2 MiB, 2 MiB + N MiB) with an xorshift32 sequence,
; clamped to the upper memory the loader reported. Returns EAX = MiB filled.
fill_memory:
        push ebx
        push ecx
        push edx
        push edi
        mov ebx, [boot_info]
        test dword [ebx], 1             ; mem_lower/mem_upper valid
        jz .nothing
        mov ecx, [ebx + 8]              ; mem_upper in KiB, from 1 MiB
        shr ecx, 10                     ; whole MiB above 1 MiB
        sub ecx, 1                      ; minus the MiB holding this image
        jbe .nothing
        cmp eax, ecx
        jbe .sized
        mov eax, ecx
.sized:
        mov [fill_mib], eax
        mov ecx, eax
        shl ecx, 18                     ; MiB -> dwords
        mov edi, FILL_BASE
        mov eax, 0x9E3779B9             ; xorshift32 seed (never zero)
.next:
        mov edx, eax
        shl edx, 13
        xor eax, edx
        mov edx, eax
        shr edx, 17
        xor eax, edx
        mov edx, eax
        shl edx, 5
        xor eax, edx
        stosd
        dec ecx
        jnz .next
        mov eax, [fill_mib]
        jmp .out
.nothing:
        xor eax, eax
.out:
        pop edi
        pop edx
        pop ecx
        pop ebx
        ret

; ------------------------------------------------------ interrupts, PIC, PIT
idt_init:
        xor ecx, ecx
.fill:
        mov eax, isr_ignore
        cmp ecx, 32
        jae .set
        mov eax, isr_fault
.set:
        call set_gate
        inc ecx
        cmp ecx, 256
        jb .fill
        mov ecx, 0x20
        mov eax, isr_timer
        call set_gate
        mov ecx, 0x24
        mov eax, isr_serial
        call set_gate
        lidt [idt_desc]
        ret

; ECX = vector, EAX = handler
set_gate:
        push eax
        push edi
        lea edi, [idt + ecx * 8]
        mov [edi], ax
        mov word [edi + 2], 0x08
        mov byte [edi + 4], 0
        mov byte [edi + 5], 0x8E        ; present, ring 0, 32-bit interrupt gate
        shr eax, 16
        mov [edi + 6], ax
        pop edi
        pop eax
        ret

pic_init:
        mov al, 0x11                    ; ICW1: init, expect ICW4
        out 0x20, al
        out 0xA0, al
        mov al, 0x20                    ; ICW2: master at vector 0x20
        out 0x21, al
        mov al, 0x28                    ; slave at 0x28
        out 0xA1, al
        mov al, 0x04                    ; ICW3: slave on IRQ2
        out 0x21, al
        mov al, 0x02
        out 0xA1, al
        mov al, 0x01                    ; ICW4: 8086 mode
        out 0x21, al
        out 0xA1, al
        mov al, 0xEE                    ; unmask IRQ0 (PIT) and IRQ4 (COM1) only
        out 0x21, al
        mov al, 0xFF
        out 0xA1, al
        ret

pit_init:
        mov al, 0x34                    ; channel 0, lo/hi byte, mode 2
        out 0x43, al
        xor al, al                      ; divisor 0 = 65536: ~18.2 Hz, the slowest rate
        out 0x40, al
        out 0x40, al
        ret

; The IRQ handlers never IRET. Interrupts are enabled only at the `sti; hlt` of the
; idle loop, so the interrupted context is always "idle": a handler records its event,
; drops the frame and re-enters the main loop. This matters because KVM's instruction
; emulator cannot emulate a protected-mode IRET, and some KVM hosts (nested KVM without
; VMX, e.g. PVM) emulate every instruction of a 32-bit guest; one IRET ends the VM with
; "KVM internal error. Suberror: 1".
isr_timer:
        inc dword [pit_count]
        mov al, 0x20
        out 0x20, al
        jmp resume_idle

isr_serial:
.drain:
        mov dx, COM1 + 5
        in al, dx
        test al, 0x01                   ; data ready
        jz .done
        mov dx, COM1
        in al, dx
        mov byte [reprint], 1
        jmp .drain
.done:
        mov al, 0x20
        out 0x20, al
        jmp resume_idle

; Spurious and unexpected vectors: nothing to acknowledge.
isr_ignore:
resume_idle:
        mov esp, stack_top              ; the idle loop keeps nothing on the stack
        jmp main_loop

; CPU exceptions: say so and stop.
isr_fault:
        cli
        mov esi, s_fault
        call puts
        mov eax, [esp]
        call put_hex
        call newline
.halt:
        hlt
        jmp .halt

file_end:

; ---------------------------------------------------------------------- bss
absolute file_end
alignb 16
boot_magic: resd 1
boot_info:  resd 1
pit_count:  resd 1
tick:       resd 1
fill_mib:   resd 1
pm_base:    resw 1
regs:       resd 4
reprint:    resb 1
decbuf:     resb 15
decbuf_end: resb 1
alignb 8
idt:        resb 256 * 8
alignb 16
stack:      resb 16384
stack_top:
bss_end:
