// Tempo landing page behaviour: mobile menu, pricing toggle, FAQ accordion and waitlist form.
(function () {
  'use strict';

  // Mobile menu
  var toggle = document.querySelector('.menu-toggle');
  var nav = document.getElementById('site-nav');
  if (toggle && nav) {
    toggle.addEventListener('click', function () {
      var open = nav.classList.toggle('open');
      toggle.setAttribute('aria-expanded', String(open));
    });
    nav.addEventListener('click', function (event) {
      if (event.target.closest('a')) {
        nav.classList.remove('open');
        toggle.setAttribute('aria-expanded', 'false');
      }
    });
  }

  // Pricing: monthly / yearly
  var billingButtons = document.querySelectorAll('.billing-option');
  billingButtons.forEach(function (button) {
    button.addEventListener('click', function () {
      var period = button.dataset.billing;
      billingButtons.forEach(function (other) {
        var active = other === button;
        other.classList.toggle('active', active);
        other.setAttribute('aria-pressed', String(active));
      });
      document.querySelectorAll('.amount').forEach(function (amount) {
        amount.textContent = '$' + amount.dataset[period];
      });
    });
  });

  // FAQ accordion: one answer open at a time
  var questions = document.querySelectorAll('.faq-question');
  questions.forEach(function (question) {
    question.addEventListener('click', function () {
      var wasOpen = question.getAttribute('aria-expanded') === 'true';
      questions.forEach(function (other) {
        other.setAttribute('aria-expanded', 'false');
        other.nextElementSibling.hidden = true;
      });
      if (!wasOpen) {
        question.setAttribute('aria-expanded', 'true');
        question.nextElementSibling.hidden = false;
      }
    });
  });

  // Waitlist form validation
  var form = document.getElementById('signup-form');
  var success = document.getElementById('signup-success');
  var EMAIL = /^[^\s@]+@[^\s@]+\.[^\s@]+$/;

  function check(input) {
    var value = input.value.trim();
    var message = '';
    if (input.name === 'name' && value.length < 2) {
      message = 'Please enter your name.';
    } else if (input.name === 'email' && !EMAIL.test(value)) {
      message = 'Please enter a valid email address.';
    } else if (input.name === 'size' && value === '') {
      message = 'Please choose your team size.';
    }
    var field = input.closest('.field');
    field.classList.toggle('invalid', message !== '');
    field.querySelector('.error').textContent = message;
    input.setAttribute('aria-invalid', String(message !== ''));
    return message === '';
  }

  if (form && success) {
    var inputs = form.querySelectorAll('input, select');
    inputs.forEach(function (input) {
      input.addEventListener('blur', function () {
        check(input);
      });
      input.addEventListener('input', function () {
        if (input.closest('.field').classList.contains('invalid')) check(input);
      });
    });

    form.addEventListener('submit', function (event) {
      event.preventDefault();
      var firstInvalid = null;
      inputs.forEach(function (input) {
        if (!check(input) && !firstInvalid) firstInvalid = input;
      });
      if (firstInvalid) {
        firstInvalid.focus();
        return;
      }
      // No back end here: send form data to your own endpoint instead.
      var name = form.elements.namedItem('name').value.trim().split(' ')[0];
      success.textContent = '🎉 Thanks, ' + name + '! You are on the list. We will email ' +
        form.elements.namedItem('email').value.trim() + ' when your invite is ready.';
      form.hidden = true;
      success.hidden = false;
    });
  }

  // Footer year
  var year = document.getElementById('year');
  if (year) year.textContent = String(new Date().getFullYear());
})();
